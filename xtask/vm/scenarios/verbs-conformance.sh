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
cases="device_query rc_connect
	rc_send_recv_1 rc_send_recv_64 rc_send_recv_4096 rc_send_recv_65536 rc_send_recv_1048576
	rc_send_with_imm rc_drain_flushes_posted_receives
	frwr_rdma_write frwr_rdma_read frwr_rdma_write_with_imm rc_receive_too_small frwr_invalidate_refuses_access rc_bad_rkey_then_reset_and_reuse rc_atomics
	rc_rnr_retry_then_delivery rc_rnr_retry_exceeded
	ud_send_with_grh ud_drain_with_sends_outstanding
	rc_softirq_cq rc_workqueue_cq rejected_post_hands_the_wr_back
	wrong_qp_type_refused qp_dropped_in_reset_and_init frwr_reregistration_retires_the_old_key
	cm_connect_send_disconnect cm_reject
	sg_region_lends_pages_until_invalidated
	device_by_name cq_resize bvec_send_and_receive"
count=0
for case in $cases; do
	expect_dmesg "$line: $case: PASS\$"
	count=$((count + 1))
done
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
