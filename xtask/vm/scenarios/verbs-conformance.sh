# The verbs conformance suite (tilde_verbs_conformance.ko) against rxe0, on the stock kernel.
# stage2 loaded tilde_core, then ran `rdma link add rxe0 type rxe netdev eth0`.
. /tilde/guest/lib.sh

suite=/tilde/suites/tilde_verbs_conformance.ko

echo "== the suite links rdma_core through tilde_core's exports"
modinfo -F depends "$suite" | grep -w tilde_core
insmod "$suite" device=rxe0
grep '^tilde_verbs_conformance ' /proc/modules
grep '^tilde_core .* tilde_verbs_conformance' /proc/modules

echo "== results: one line per case"
for case in device_query rc_connect \
	rc_send_recv_1 rc_send_recv_64 rc_send_recv_4096 rc_send_recv_65536 rc_send_recv_1048576 \
	rc_send_with_imm rc_drain_flushes_posted_receives \
	frwr_rdma_write frwr_rdma_read frwr_invalidate_refuses_access rc_bad_rkey_then_reset_and_reuse rc_atomics \
	ud_send_with_grh ud_drain_with_sends_outstanding \
	rc_softirq_cq rc_workqueue_cq slot_reuse_refused \
	wrong_qp_type_refused qp_dropped_in_reset frwr_reregistration_retires_the_old_key; do
	expect_dmesg "tilde_verbs_conformance: rxe0: $case: PASS\$"
done
reject_dmesg 'tilde_verbs_conformance: .*: FAIL'
expect_dmesg 'tilde_verbs_conformance: rxe0: summary: 22 passed, 0 failed$'

echo "== tilde_core stays while the suite uses it"
if rmmod tilde_core 2>/dev/null; then
	echo "FAIL: tilde_core unloaded under a user"
	exit 1
fi
rmmod tilde_verbs_conformance
rmmod tilde_core
