# The verbs conformance suite (tilde_verbs_conformance.ko) against rxe0, on the stock kernel.
# stage2 loaded tilde_core, then ran `rdma link add rxe0 type rxe netdev eth0`.
. /tilde/guest/lib.sh

suite=/tilde/suites/tilde_verbs_conformance.ko
line='tilde_verbs_conformance: rxe0'

echo "== the suite links rdma_core through tilde_core's exports"
modinfo -F depends "$suite" | grep -w tilde_core
insmod "$suite" device=rxe0
grep '^tilde_verbs_conformance ' /proc/modules
grep '^tilde_core .* tilde_verbs_conformance' /proc/modules

echo "== results: one line per case"
# shellcheck disable=SC2086 # the lists are words
count=$(expect_cases "$line" $CONFORMANCE_CASES $CONFORMANCE_CM_CASES)
reject_dmesg 'tilde_verbs_conformance: .*: FAIL'
expect_dmesg "$line: summary: $count passed, 0 failed, 0 skipped\$"

echo "== tilde_core stays while the suite uses it"
if rmmod tilde_core 2>/dev/null; then
	echo "FAIL: tilde_core unloaded under a user"
	exit 1
fi

echo "== device removal while QPs are live (receives posted, nothing polling)"
expect_dmesg "$line: resident: QPs [0-9]+ and [0-9]+ up, 16 WRs posted\$"
rdma link delete rxe0
expect_dmesg "$line: device_removal_with_live_qps: PASS\$"
rmmod tilde_verbs_conformance

echo "== module unload with traffic in flight"
rdma link add rxe0 type rxe netdev eth0
insmod "$suite" device=rxe0 traffic=1
expect_dmesg "$line: resident: .* 20 WRs posted, traffic running\$"
sleep 2
rmmod tilde_verbs_conformance
expect_dmesg "$line: unload_with_traffic_in_flight: PASS\$"

echo "== device removal with traffic in flight"
insmod "$suite" device=rxe0 traffic=1
sleep 2
rdma link delete rxe0
expect_dmesg "$line: device_removal_with_traffic_in_flight: PASS\$"
rmmod tilde_verbs_conformance
reject_dmesg 'tilde_verbs_conformance: .*: FAIL'

echo "== the benchmark's rings run (a short run: correctness, not speed)"
rdma link add rxe0 type rxe netdev eth0
insmod "$suite" device=rxe0 bench=400
expect_dmesg "$line: bench: rc_send_64B x 400: safe [0-9]+ ns/op"
expect_dmesg "$line: bench: rdma_write_64KiB x 100: safe [0-9]+ ns/op"
rmmod tilde_verbs_conformance
reject_dmesg 'tilde_verbs_conformance: .*FAIL'
rmmod tilde_core
