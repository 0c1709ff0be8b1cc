# The emulated ConnectX-3 on its own, against the kernel's C drivers: mlx4_core and
# mlx4_ib bind it and register mlx4_0 with its two InfiniBand ports, the rdma-core tools
# see it, and the drivers unload and rebind cleanly. No tilde module is loaded: the
# upstream driver, written against the silicon, is what tests the device.
# needs-device: cx3
# no-modules
. /tilde/guest/lib.sh

echo "== the device on the PCI bus"
dev=$(cx3_function)
echo "ConnectX-3 at $dev"

echo "== mlx4_core binds it"
modprobe mlx4_core
[ -e "/sys/bus/pci/devices/$dev/driver" ] || { echo "FAIL: mlx4_core did not bind $dev"; exit 1; }
expect_dmesg "mlx4_core $dev: .*"

echo "== mlx4_ib registers mlx4_0"
modprobe mlx4_ib
for i in $(seq 100); do
	[ -e /sys/class/infiniband/mlx4_0 ] && break
	sleep 0.1
done
[ -e /sys/class/infiniband/mlx4_0 ] || { echo "FAIL: no mlx4_0"; exit 1; }
ibv_devinfo -v -d mlx4_0 | tee devinfo.log
grep -q 'phys_port_cnt:.*2' devinfo.log
[ "$(grep -c 'link_layer:.*InfiniBand' devinfo.log)" = 2 ]
rdma link show | tee links.log
grep -q 'mlx4_0/1' links.log
grep -q 'mlx4_0/2' links.log
echo "== opensm activates both ports"
modprobe ib_umad
# The driver learns of the ACTIVE ports from the device's PORT_CHANGE events, which
# reach user space as asynchronous events.
ibv_asyncwatch -d mlx4_0 > asyncwatch.log 2>&1 &
asyncwatch=$!
guid=$(awk -F: '{printf "0x%s%s%s%s", $5, $6, $7, $8}' /sys/class/infiniband/mlx4_0/ports/1/gids/0)
opensm -g "$guid" -f /tmp/opensm.log > opensm.out 2>&1 &
opensm=$!
for i in $(seq 300); do
	if [ "$(rdma link show | grep -c 'mlx4_0/[12] .*state ACTIVE')" = 2 ]; then
		break
	fi
	sleep 0.1
done
rdma link show | tee links-active.log
if [ "$(grep -c 'mlx4_0/[12] .*state ACTIVE' links-active.log)" != 2 ]; then
	echo "FAIL: opensm did not activate both ports within 30 s"
	tail -n 30 /tmp/opensm.log
	exit 1
fi
grep 'mlx4_0/1' links-active.log | grep -qv 'lid 0 '
grep 'mlx4_0/2' links-active.log | grep -qv 'lid 0 '
for i in $(seq 100); do
	[ "$(grep -c PORT_ACTIVE asyncwatch.log)" -ge 2 ] && break
	sleep 0.1
done
kill "$asyncwatch"
wait "$asyncwatch" || true
cat asyncwatch.log
[ "$(grep -c PORT_ACTIVE asyncwatch.log)" -ge 2 ] || { echo "FAIL: no PORT_ACTIVE event for both ports"; exit 1; }
kill "$opensm"
wait "$opensm" || true

echo "== the port counters (the firmware's performance management agent) saw the sweep"
for port in 1 2; do
	for counter in port_xmit_packets port_rcv_packets port_xmit_data; do
		value=$(cat /sys/class/infiniband/mlx4_0/ports/$port/counters/$counter)
		echo "port $port $counter $value"
		[ "$value" -gt 0 ] || { echo "FAIL: port $port $counter is 0 after the SM's sweep"; exit 1; }
	done
done
reject_dmesg "mlx4_core.*(failed|error|timeout|Error)"

echo "== unbind and rebind the PCI function (the reset path)"
echo "$dev" > /sys/bus/pci/drivers/mlx4_core/unbind
if [ -e /sys/class/infiniband/mlx4_0 ]; then
	echo "FAIL: mlx4_0 is still there after unbind"
	exit 1
fi
echo "$dev" > /sys/bus/pci/drivers/mlx4_core/bind
for i in $(seq 100); do
	[ -e /sys/class/infiniband/mlx4_0 ] && break
	sleep 0.1
done
[ -e /sys/class/infiniband/mlx4_0 ] || { echo "FAIL: no mlx4_0 after rebind"; exit 1; }
rdma link show mlx4_0/2
reject_dmesg "mlx4_core.*(failed|error|timeout|Error)"

echo "== unload"
rmmod mlx4_ib mlx4_core
if [ -e /sys/class/infiniband/mlx4_0 ]; then
	echo "FAIL: mlx4_0 is still there after rmmod"
	exit 1
fi
