# tilde_mlx4 as a PCI driver on the emulated ConnectX-3: it binds the function through
# its module alias, brings the HCA up (firmware area, ICM, INIT_HCA, the async and
# completion EQs on their MSI-X vectors, the NOP interrupt test, both InfiniBand ports
# opened), moves a SEND between two of its QPs with tilde's fast path (completion by
# interrupt), and closes it on unbind and on rmmod with every page given back.
# Rebinding works; a catastrophic error the device raises on request is recovered from
# by a function reset and a new bring-up; afterwards the kernel's own mlx4_core and
# mlx4_ib take the same function and register mlx4_0, so the device was left as a
# driver finds it. Over the HCA, tilde_mlx4 registers its InfiniBand device,
# tilde_mlx4_0, whose attributes (asked of the SMA through MAD_IFC) must be what mlx4_ib
# reports of the same device, and the kernel's own ib_ipoib brings ib0 up and down over it
# (PD, DMA MR, CQs, a UD QP through RTS, receives posted and flushed). The device process
# fails the run on any command, mailbox or DMA mistake it sees (docs/cx3-device.md).
# needs-device: cx3
# needs-module: tilde_mlx4
. /tilde/guest/lib.sh

driver=/tilde/drivers/tilde_mlx4.ko

echo "== the device on the PCI bus, bound to nothing"
dev=$(cx3_function)
echo "ConnectX-3 at $dev"
refute "$dev is already bound" test -e "/sys/bus/pci/devices/$dev/driver"

echo "== the module's alias matches the function"
alias=$(modinfo -F alias "$driver")
echo "alias: $alias; the function's: $(cat "/sys/bus/pci/devices/$dev/modalias")"
# modalias patterns are shell globs.
# shellcheck disable=SC2254
case "$(cat "/sys/bus/pci/devices/$dev/modalias")" in
$alias) ;;
*) echo "FAIL: $alias does not match the function"; exit 1 ;;
esac

# expect_count N REGEX: exactly N kernel log lines match REGEX.
expect_count() {
	local seen
	seen=$(count_dmesg "$2")
	if [ "$seen" != "$1" ]; then
		echo "FAIL: $seen dmesg lines, not $1, match: $2"
		return 1
	fi
}

bound_to() {
	[ "$(basename "$(readlink "/sys/bus/pci/devices/$dev/driver")")" = "$1" ]
}

# expect_probe N: the Nth probe's lines are there.
expect_probe() {
	expect_count "$1" "tilde_mlx4: $dev: ConnectX-3 firmware 2\.42\.5000, command interface revision 3"
	expect_count "$1" "tilde_mlx4: $dev: HCA initialized: [0-9]+ firmware, [0-9]+ auxiliary and [0-9]+ ICM pages"
	expect_count "$1" "tilde_mlx4: $dev: async EQ [0-9]+ and 2 completion EQs armed, commands by events"
	expect_count "$1" "tilde_mlx4: $dev: port 1 open: InfiniBand, MTU cap 5, 128 GIDs, 128 P_Keys"
	expect_count "$1" "tilde_mlx4: $dev: port 2 open: InfiniBand, MTU cap 5, 128 GIDs, 128 P_Keys"
	# The interrupt test: the commands completed by events raised MSI-X interrupts that
	# reached the driver's handler on the async EQ's vector.
	expect_count "$1" "tilde_mlx4: $dev: MSI-X: 3 vectors, [1-9][0-9]* interrupts on the async EQ's by the probe's commands"
	# The data-path check: a SEND between two RC QPs created through the firmware, by
	# the fast path over the device's own queue memory and UAR page, its completion
	# event by MSI-X on the first completion EQ's vector.
	expect_count "$1" "tilde_mlx4: $dev: data path: [0-9]+ bytes sent from QP 0x[0-9a-f]+ to QP 0x[0-9a-f]+ by the fast path, completion event for CQ 0x[0-9a-f]+ by MSI-X"
	expect_count "$1" "tilde_mlx4: $dev: traffic: 2048 SENDs, 8192 KiB in [0-9]+ ms \([0-9]+ KiB/s\), every completion and byte checked"
	echo "ok: probe $1: $(grep -E "tilde_mlx4: $dev: HCA initialized" "$(kernel_log)" | tail -n 1)"
}

echo "== insmod: tilde_mlx4 binds the function and brings the HCA up"
insmod "$driver"
expect_dmesg 'tilde_mlx4: loaded: PCI driver for ConnectX-3 \(15b3:1003\) registered$'
bound_to tilde_mlx4 || { echo "FAIL: $dev is not bound to tilde_mlx4"; exit 1; }
expect_probe 1

echo "== the InfiniBand device over it: tilde_mlx4_0, its ports as the SMA reports them"
expect_count 1 "tilde_mlx4: $dev: InfiniBand device tilde_mlx4_0 registered: 2 ports, node GUID [0-9a-f]{16}$"
expect_dmesg 'tilde_core: tilde_mlx4_0: added: node_guid [0-9a-f]{4}(:[0-9a-f]{4}){3} ports 2$'
rdma link show | tee links.log
# No subnet manager runs: the links are up, the ports wait in INIT for one.
grep -Eq 'link tilde_mlx4_0/1 .*state INIT physical_state LINK_UP' links.log
grep -Eq 'link tilde_mlx4_0/2 .*state INIT physical_state LINK_UP' links.log
[ "$(readlink -f /sys/class/infiniband/tilde_mlx4_0/device)" = "$(readlink -f "/sys/bus/pci/devices/$dev")" ] ||
	{ echo "FAIL: tilde_mlx4_0 is not the PCI function's (no DMA device)"; exit 1; }

# ib_attrs DEV: what the IB core shows of DEV, the driver's answers (by MAD_IFC), one
# attribute a line.
ib_attrs() {
	local d=/sys/class/infiniband/$1 p
	echo "node_type $(cat $d/node_type)"
	echo "node_guid $(cat $d/node_guid)"
	echo "sys_image_guid $(cat $d/sys_image_guid)"
	for p in 1 2; do
		for a in link_layer state phys_state lid sm_lid lid_mask_count rate gids/0 gids/1 pkeys/0 pkeys/1; do
			echo "port $p $a $(cat $d/ports/$p/$a)"
		done
	done
}
ib_attrs tilde_mlx4_0 | tee tilde_attrs.log
grep -q '^port 1 gids/0 fe80:0000:0000:0000:' tilde_attrs.log
grep -q '^port 1 pkeys/0 0xffff$' tilde_attrs.log

echo "== the kernel's ib_ipoib over tilde_mlx4_0: ib0's UD QP through RTS, its receives posted, then flushed"
# The MAD layer's objects are there already: QP0 and QP1 of each port, their CQs, a PD.
rdma resource show tilde_mlx4_0 | tee res_before.log
qps() { sed -n 's/.* qp \([0-9]*\) .*/\1/p' "$1"; }
modprobe ib_ipoib
for i in $(seq 100); do
	[ -e /sys/class/net/ib0 ] && break
	sleep 0.1
done
ip -d link show ib0 | tee ib0.log
grep -q 'link/infiniband' ib0.log
# The 20-byte address: flags and QPN, then the port's GID 0.
gid=$(sed -n 's/^port 1 gids\/0 //p' tilde_attrs.log | tr -d :)
addr=$(cat /sys/class/net/ib0/address | tr -d :)
[ "${addr#????????}" = "$gid" ] || { echo "FAIL: ib0's address $addr does not end in GID $gid"; exit 1; }
rdma resource show tilde_mlx4_0 | tee res.log
# ib0 and ib1: a UD QP each (and its CQs, its PD, its DMA MR).
[ "$(qps res.log)" = "$(( $(qps res_before.log) + 2 ))" ] ||
	{ echo "FAIL: ib_ipoib's QPs are not on tilde_mlx4_0"; exit 1; }
ip link set ib0 up
ip link show ib0 | tee ib0.log
grep -q '<.*UP.*>' ib0.log
ip link set ib0 down
ip link set ib0 up
ip link set ib0 down
modprobe -r ib_ipoib
reject_dmesg 'ib[01]: .*(failed|timing out|Failed|not completed)'
rdma resource show tilde_mlx4_0 | tee res.log
diff -u res_before.log res.log || { echo "FAIL: ib_ipoib left objects on tilde_mlx4_0"; exit 1; }

echo "== unbind: the HCA is closed and every page given back"
echo "$dev" > /sys/bus/pci/drivers/tilde_mlx4/unbind
refute "$dev is still bound" test -e "/sys/bus/pci/devices/$dev/driver"
expect_count 1 "tilde_mlx4: $dev: interrupts taken: async EQ [1-9][0-9]*, completion EQs [0-9]+ and [0-9]+$"
refute "the MSI-X vectors are still requested" grep -q tilde_mlx4 /proc/interrupts
expect_count 1 "tilde_mlx4: $dev: InfiniBand device tilde_mlx4_0 unregistered$"
expect_count 1 "tilde_mlx4: $dev: HCA closed, every page given back$"

echo "== bind again: a second probe on the same function"
echo "$dev" > /sys/bus/pci/drivers/tilde_mlx4/bind
bound_to tilde_mlx4 || { echo "FAIL: $dev did not bind again"; exit 1; }
expect_probe 2

echo "== a catastrophic error: the driver resets the function and brings the HCA up again"
tilde_mlx4_catas "$dev"
expect_probe 3
bound_to tilde_mlx4 || { echo "FAIL: $dev is not bound after the recovery"; exit 1; }

echo "== rmmod closes it too"
rmmod tilde_mlx4
refute "tilde_mlx4 is still loaded" grep -q '^tilde_mlx4 ' /proc/modules
refute "$dev is still bound" test -e "/sys/bus/pci/devices/$dev/driver"
expect_count 2 "tilde_mlx4: $dev: HCA closed, every page given back$"
reject_dmesg "tilde_mlx4: .*(failed|refused|outside the BAR|left with the device)"

echo "== the upstream driver takes the function after tilde_mlx4"
modprobe mlx4_core
bound_to mlx4_core || { echo "FAIL: mlx4_core did not bind $dev after tilde_mlx4"; exit 1; }
modprobe mlx4_ib
for i in $(seq 100); do
	[ -e /sys/class/infiniband/mlx4_0 ] && break
	sleep 0.1
done
[ -e /sys/class/infiniband/mlx4_0 ] || { echo "FAIL: no mlx4_0 after tilde_mlx4 let go"; exit 1; }
rdma link show | tee links.log
grep -q 'mlx4_0/1' links.log
grep -q 'mlx4_0/2' links.log
echo "== the two drivers agree on what the device is"
ib_attrs mlx4_0 | tee upstream_attrs.log
diff -u upstream_attrs.log tilde_attrs.log || { echo "FAIL: tilde_mlx4_0 and mlx4_0 differ"; exit 1; }
rmmod mlx4_ib mlx4_core
reject_dmesg "mlx4_core.*(failed|error|timeout|Error)"
