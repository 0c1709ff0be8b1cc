# tilde_loopback.ko: tilde's software RoCE device, written on rdma_core's driver side
# (the trait that becomes ib_device_ops), registered with the IB core and bound to a
# dummy network device for its GIDs; then the verbs conformance suite runs over it, as
# over rxe0: every case passes except RDMA CM's two, skipped (the device has no MADs).
# needs-module: tilde_loopback
. /tilde/guest/lib.sh

driver=/tilde/drivers/tilde_loopback.ko
suite=/tilde/suites/tilde_verbs_conformance.ko
line='tilde_verbs_conformance: tilde_lo0'

echo "== the device registers, bound to a dummy netdev"
ip link add tl0 type dummy
ip link set tl0 up
modinfo -F depends "$driver" | grep -w tilde_core
insmod "$driver" netdev=tl0
expect_dmesg 'tilde_loopback: tilde_lo0: registered: RoCE loopback device$'
grep '^tilde_core .* tilde_loopback' /proc/modules
rdma link show tilde_lo0/1
rdma link show tilde_lo0/1 | grep -w ACTIVE
rdma link show tilde_lo0/1 | grep -w 'netdev tl0'
expect_dmesg 'tilde_core: tilde_lo0: added: .* ports 1$'
expect_dmesg 'tilde_core: tilde_lo0: port 1: link_layer Ethernet state ACTIVE'

echo "== the conformance suite over it"
insmod "$suite" device=tilde_lo0
cases="device_query rc_connect
	rc_send_recv_1 rc_send_recv_64 rc_send_recv_4096 rc_send_recv_65536 rc_send_recv_1048576
	rc_send_with_imm rc_drain_flushes_posted_receives
	frwr_rdma_write frwr_rdma_read frwr_rdma_write_with_imm rc_receive_too_small frwr_invalidate_refuses_access rc_bad_rkey_then_reset_and_reuse rc_atomics
	rc_rnr_retry_then_delivery rc_rnr_retry_exceeded
	ud_send_with_grh ud_drain_with_sends_outstanding
	rc_softirq_cq rc_workqueue_cq rejected_post_hands_the_wr_back
	wrong_qp_type_refused qp_dropped_in_reset_and_init frwr_reregistration_retires_the_old_key
	sg_region_lends_pages_until_invalidated
	device_by_name cq_resize bvec_send_and_receive"
count=0
for case in $cases; do
	expect_dmesg "$line: $case: PASS\$"
	count=$((count + 1))
done
expect_dmesg "$line: cm_connect_send_disconnect: SKIP: the port has no IB CM\$"
expect_dmesg "$line: cm_reject: SKIP: the port has no IB CM\$"
reject_dmesg 'tilde_verbs_conformance: .*: FAIL'
expect_dmesg "$line: summary: $count passed, 0 failed, 2 skipped\$"

echo "== unloading the driver removes the device under the suite's live QPs"
expect_dmesg "$line: resident: QPs [0-9]+ and [0-9]+ up, 16 WRs posted\$"
rmmod tilde_loopback
expect_dmesg "$line: device_removal_with_live_qps: PASS\$"
expect_dmesg 'tilde_core: tilde_lo0: removed$'
expect_dmesg 'tilde_loopback: unloaded$'
rmmod tilde_verbs_conformance
reject_dmesg 'tilde_verbs_conformance: .*: FAIL'

echo "== the netdev going away unbinds the port"
insmod "$driver" netdev=tl0
rdma link show tilde_lo0/1 | grep -w ACTIVE
ip link delete tl0
expect_dmesg 'tilde_loopback: tilde_lo0: tl0 is going away: port 1 unbound$'
rdma link show tilde_lo0/1
rmmod tilde_loopback
rmmod tilde_core
