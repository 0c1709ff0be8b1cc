# iSER over tilde_mlx4: the emulated ConnectX-3 bound by tilde's driver, the LIO target's
# isert and the initiator both on it, the portal on ib0's IPoIB address (the kernel's
# ib_ipoib over tilde_mlx4_0), RDMA CM through the IB CM's MADs on tilde's QP1s, and
# iSER's fast registrations, LOCAL_INV and SEND with invalidate through tilde's fast
# path. First the kernel's own ib_iser (ULPs nobody here wrote, over our driver), then
# tilde_iser against the same target (Rust over Rust), each through the data checks of
# iser.sh; the port's PMA counters show the data crossed tilde_mlx4_0.
# needs-device: cx3
# needs-module: tilde_mlx4
# needs-module: tilde_iser
# timeout: 600
. /tilde/guest/lib.sh
. /tilde/guest/ipoib.sh
. /tilde/guest/iser.sh

insmod /tilde/drivers/tilde_mlx4.ko
ib_activate tilde_mlx4_0
ib_ipoib_up
# A link-local address: the traffic never leaves the emulated device.
ISER_ADDR=169.254.78.1
ipoib_addr_up "$IB_IF1" "$ISER_ADDR"
iser_target_up
iser_iscsid

xmit=/sys/class/infiniband/tilde_mlx4_0/ports/1/counters/port_xmit_data
# crossed BEFORE: the data checks moved at least 256 MiB each way through port 1 since
# the counter read BEFORE (PortXmitData counts 4-byte words).
crossed() {
	local after
	after=$(cat "$xmit")
	echo "port 1 port_xmit_data: $1 -> $after"
	[ $((after - $1)) -gt $((256 << 20 >> 2)) ] || { echo "FAIL: the data did not cross tilde_mlx4_0"; return 1; }
}

echo "== the kernel's ib_iser over tilde_mlx4_0"
modprobe ib_iser
iser_login
before=$(cat "$xmit")
iser_data_checks
crossed "$before"
iser_logout
rmmod ib_iser

echo "== tilde_iser over tilde_mlx4_0"
modprobe rdma_cm
modprobe libiscsi
insmod /tilde/ulps/tilde_iser.ko
expect_dmesg 'tilde_iser: iSCSI transport "iser" registered'
iser_login
expect_dmesg "tilde_iser: tilde_mlx4_0: connected to 169\.254\.78\.1:3260"
before=$(cat "$xmit")
iser_data_checks
crossed "$before"
iser_logout
expect_dmesg 'tilde_iser: tilde_mlx4_0: disconnected from 169\.254\.78\.1:3260: [1-9][0-9]* commands registered'
pkill iscsid || true
iser_target_down
rmmod tilde_iser
reject_dmesg 'tilde_iser: .*connection failed'

echo "== unload: nothing left on tilde_mlx4_0 but the MAD layer's"
ip link set "$IB_IF1" down
rmmod ib_ipoib
ib_stop_sm
rmmod ib_umad
rmmod tilde_mlx4
reject_dmesg 'tilde_mlx4: .*(failed|refused|multicast)'
expect_dmesg 'tilde_mlx4: [0-9a-f:.]+: HCA closed, every page given back$'
