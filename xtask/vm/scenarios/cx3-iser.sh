# The kernel's own iSER (ib_iser against LIO's isert) over the emulated ConnectX-3: the
# target's portal on ib0's IPoIB address, RDMA CM through the IB CM on QP1, and iSER's
# fast registrations (REG_MR, LOCAL_INV, SEND with invalidate) carrying the data checks of
# iser.sh. ULPs nobody here wrote, over the device the upstream driver accepts.
# needs-device: cx3
# no-modules
. /tilde/guest/lib.sh
. /tilde/guest/ipoib.sh
. /tilde/guest/iser.sh

cx3_active
ib_ipoib_up
# A link-local address: the traffic never leaves the emulated device.
ISER_ADDR=169.254.78.1
ipoib_addr_up "$IB_IF1" "$ISER_ADDR"
iser_target_up
modprobe ib_iser
iser_iscsid
iser_login
before=$(cat /sys/class/infiniband/mlx4_0/ports/1/counters/port_xmit_data)
iser_data_checks
after=$(cat /sys/class/infiniband/mlx4_0/ports/1/counters/port_xmit_data)
# The data checks move at least 256 MiB each way; the counter is in 4-byte words.
echo "port 1 port_xmit_data: $before -> $after"
[ $((after - before)) -gt $((256 << 20 >> 2)) ] || { echo "FAIL: the data did not cross mlx4_0"; exit 1; }
iser_logout
pkill iscsid || true
iser_target_down
rmmod ib_iser
ip link set "$IB_IF1" down
rmmod ib_ipoib
reject_dmesg "mlx4_core.*(failed|error|timeout|Error)"
