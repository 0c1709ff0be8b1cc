# tilde's verbs conformance suite over tilde_mlx4_0: tilde's own ConnectX-3 driver,
# activated by opensm, under the same cases mlx4_0 passes (cx3-conformance): RC by LID,
# fast registration, atomics, RNR, UD with a GRH, drains, every CQ poll context, and
# RDMA CM resolved through the kernel's ib_ipoib over tilde_mlx4_0 (ARP through the
# broadcast group tilde_mlx4 attached, opensm's path records, the IB CM's MADs through
# tilde's QP1s). Then the lifetime cases: unloading the suite with traffic in flight,
# and tilde_mlx4_0 taken away under the suite's traffic three ways: a catastrophic error
# the device raises (the driver resets the function and registers the device again), a
# sysfs unbind, and rmmod tilde_mlx4. Each time the IB device is unregistered, every QP
# destroyed through the driver with the suite's clients told first, and every posted WR
# comes back to the suite (flushed or completed) before its QPs go.
# needs-device: cx3
# needs-module: tilde_mlx4
. /tilde/guest/lib.sh
. /tilde/guest/ipoib.sh

suite=/tilde/suites/tilde_verbs_conformance.ko
line='tilde_verbs_conformance: tilde_mlx4_0'

insmod /tilde/drivers/tilde_mlx4.ko
ib_activate tilde_mlx4_0

echo "== ib0 up with an address, for RDMA CM (ib1 stays down: one address per subnet)"
ib_ipoib_up
ipoib_addr_up "$IB_IF1" 169.254.79.1

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

dev=$(cx3_function)
# removals_pass N: N removals under traffic have passed.
removals_pass() {
	[ "$(count_dmesg "$line: device_removal_with_traffic_in_flight: PASS\$")" = "$1" ] ||
		{ echo "FAIL: removal $1 under traffic did not pass"; return 1; }
}
# start_traffic: the suite loaded with its resident QPs and traffic running.
start_traffic() {
	local pattern="$line: resident: .* 20 WRs posted, traffic running\$" before
	before=$(count_dmesg "$pattern")
	insmod "$suite" device=tilde_mlx4_0 traffic=1
	[ "$(count_dmesg "$pattern")" -gt "$before" ] ||
		{ echo "FAIL: the suite's traffic did not start"; return 1; }
	sleep 2
}

echo "== a catastrophic error with traffic in flight: reset, tilde_mlx4_0 registered again"
start_traffic
tilde_mlx4_catas "$dev"
removals_pass 1
rmmod tilde_verbs_conformance
# The new device's ports are down until a subnet manager sweeps them again.
ib_stop_sm
ib_activate tilde_mlx4_0

echo "== sysfs unbind with traffic in flight"
start_traffic
echo "$dev" > /sys/bus/pci/drivers/tilde_mlx4/unbind
removals_pass 2
rmmod tilde_verbs_conformance
ib_stop_sm
echo "$dev" > /sys/bus/pci/drivers/tilde_mlx4/bind
ib_activate tilde_mlx4_0

echo "== device removal with traffic in flight (rmmod tilde_mlx4 unregisters tilde_mlx4_0)"
start_traffic
ib_stop_sm
rmmod ib_ipoib
rmmod ib_umad
rmmod tilde_mlx4
removals_pass 3
[ "$(count_dmesg 'tilde_mlx4: [0-9a-f:.]+: HCA closed, every page given back$')" = 2 ] ||
	{ echo "FAIL: the HCA was not closed cleanly on unbind and on rmmod"; exit 1; }
rmmod tilde_verbs_conformance
reject_dmesg 'tilde_verbs_conformance: .*: (FAIL|fail).*(removal|unload|traffic)'
reject_dmesg 'tilde_mlx4: .*(failed|refused|outside the BAR|left with the device)'
