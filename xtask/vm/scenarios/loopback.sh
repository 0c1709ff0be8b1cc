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
# shellcheck disable=SC2086 # the list is words
count=$(expect_cases "$line" $CONFORMANCE_CASES)
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

echo "== the port follows the netdev: down, up (events from the IB core or, on kernels"
echo "   whose core does not report them, from the driver)"
insmod "$driver" netdev=tl0
rdma link show tilde_lo0/1 | grep -w ACTIVE
ip link set tl0 down
wait_dmesg 'tilde_core: tilde_lo0: port 1: event: port error$'
rdma link show tilde_lo0/1 | grep -w DOWN
ip link set tl0 up
wait_dmesg 'tilde_core: tilde_lo0: port 1: event: port active$'
rdma link show tilde_lo0/1 | grep -w ACTIVE
[ "$(count_dmesg 'tilde_core: tilde_lo0: port 1: event: port (error|active)$')" -eq 2 ]

echo "== the netdev going away unbinds the port"
ip link delete tl0
expect_dmesg 'tilde_loopback: tilde_lo0: tl0 is going away: port 1 unbound$'
rdma link show tilde_lo0/1
rmmod tilde_loopback
rmmod tilde_core
