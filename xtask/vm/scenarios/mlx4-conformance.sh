# tilde's verbs conformance suite over tilde_mlx4_0: tilde's own ConnectX-3 driver,
# activated by opensm, under the same cases mlx4_0 passes (cx3-conformance): RC by LID,
# fast registration, atomics, RNR, UD with a GRH, drains, every CQ poll context, and
# RDMA CM resolved through the kernel's ib_ipoib over tilde_mlx4_0 (ARP through the
# broadcast group tilde_mlx4 attached, opensm's path records, the IB CM's MADs through
# tilde's QP1s). Then the lifetime cases: unloading the suite with traffic in flight,
# and tilde_mlx4 itself unloaded under the suite's traffic (its IB device unregistered:
# every QP destroyed through the driver, the suite's clients told first).
# needs-device: cx3
# needs-module: tilde_mlx4
. /tilde/guest/lib.sh

suite=/tilde/suites/tilde_verbs_conformance.ko
line='tilde_verbs_conformance: tilde_mlx4_0'

insmod /tilde/drivers/tilde_mlx4.ko
ib_activate tilde_mlx4_0

echo "== ib0 up with an address, for RDMA CM (ib1 stays down: one address per subnet)"
modprobe ib_ipoib
for i in $(seq 100); do
	[ -e /sys/class/net/ib0 ] && break
	sleep 0.1
done
ip addr add 169.254.79.1/24 dev ib0
ip link set ib0 up
for i in $(seq 300); do
	ip link show ib0 | grep -q LOWER_UP && break
	sleep 0.1
done
ip link show ib0
ip link show ib0 | grep -q LOWER_UP || { echo "FAIL: ib0's carrier is off (broadcast group not joined)"; exit 1; }

echo "== results: one line per case"
insmod "$suite" device=tilde_mlx4_0 cm_addr=169.254.79.1
# shellcheck disable=SC2086 # the lists are words
count=$(expect_cases "$line" $CONFORMANCE_CASES $CONFORMANCE_CM_CASES)
reject_dmesg 'tilde_verbs_conformance: .*: FAIL'
expect_dmesg "$line: summary: $count passed, 0 failed, 0 skipped\$"
expect_dmesg "$line: resident: QPs [0-9]+ and [0-9]+ up, 16 WRs posted\$"
rmmod tilde_verbs_conformance

echo "== module unload with traffic in flight"
insmod "$suite" device=tilde_mlx4_0 traffic=1
expect_dmesg "$line: resident: .* 20 WRs posted, traffic running\$"
sleep 2
rmmod tilde_verbs_conformance
expect_dmesg "$line: unload_with_traffic_in_flight: PASS\$"

echo "== device removal with traffic in flight (rmmod tilde_mlx4 unregisters tilde_mlx4_0)"
insmod "$suite" device=tilde_mlx4_0 traffic=1
sleep 2
ib_stop_sm
rmmod ib_ipoib
rmmod ib_umad
rmmod tilde_mlx4
expect_dmesg "$line: device_removal_with_traffic_in_flight: PASS\$"
expect_dmesg 'tilde_mlx4: [0-9a-f:.]+: HCA closed, every page given back$'
rmmod tilde_verbs_conformance
reject_dmesg 'tilde_verbs_conformance: .*: (FAIL|fail).*(removal|unload|traffic)'
reject_dmesg 'tilde_mlx4: .*(failed|refused|outside the BAR|left with the device)'
