# tilde's verbs conformance suite over tilde_mlx4_0: tilde's own ConnectX-3 driver,
# activated by opensm, under the same cases mlx4_0 passes (cx3-conformance): RC by LID,
# fast registration, atomics, RNR, UD with a GRH, drains, every CQ poll context. Then the
# lifetime cases: unloading the suite with traffic in flight, and tilde_mlx4 itself
# unloaded under the suite's traffic (its IB device unregistered: every QP destroyed
# through the driver, the suite's clients told first). The two RDMA CM cases are not run:
# they resolve through IPoIB, which needs multicast attach (docs/mlx4-driver.md).
# needs-device: cx3
# needs-module: tilde_mlx4
. /tilde/guest/lib.sh

suite=/tilde/suites/tilde_verbs_conformance.ko
line='tilde_verbs_conformance: tilde_mlx4_0'

insmod /tilde/drivers/tilde_mlx4.ko
ib_activate tilde_mlx4_0

echo "== results: one line per case"
insmod "$suite" device=tilde_mlx4_0
# shellcheck disable=SC2086 # the list is words
count=$(expect_cases "$line" $CONFORMANCE_CASES)
for case in $CONFORMANCE_CM_CASES; do
	expect_dmesg "$line: $case: FAIL: the port has no IPv4 GID and no IPoIB address was given\$"
done
expect_dmesg "$line: summary: $count passed, 2 failed, 0 skipped\$"
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
rmmod ib_umad
rmmod tilde_mlx4
expect_dmesg "$line: device_removal_with_traffic_in_flight: PASS\$"
expect_dmesg 'tilde_mlx4: [0-9a-f:.]+: HCA closed, every page given back$'
rmmod tilde_verbs_conformance
reject_dmesg 'tilde_verbs_conformance: .*: (FAIL|fail).*(removal|unload|traffic)'
reject_dmesg 'tilde_mlx4: .*(failed|refused|outside the BAR|left with the device)'
