# tilde's verbs conformance suite over mlx4_0: the emulated ConnectX-3 bound by the
# kernel's mlx4_core and mlx4_ib, a second real device for the suite beside rxe0 and the
# first with an InfiniBand link layer: its RC paths go by LID, its UD sends carry a GRH
# by choice, and RDMA CM resolves through IPoIB, opensm's path records and the IB CM.
# needs-device: cx3
. /tilde/guest/lib.sh
. /tilde/guest/ipoib.sh

suite=/tilde/suites/tilde_verbs_conformance.ko
line='tilde_verbs_conformance: mlx4_0'

cx3_active

echo "== ib0 up with an address, for RDMA CM (ib1 stays down: one address per subnet)"
ib_ipoib_up
ipoib_addr_up "$IB_IF1" 169.254.79.1

echo "== results: one line per case"
insmod "$suite" device=mlx4_0 cm_addr=169.254.79.1
# shellcheck disable=SC2086 # the lists are words
count=$(expect_cases "$line" $CONFORMANCE_CASES $CONFORMANCE_CM_CASES)
reject_dmesg 'tilde_verbs_conformance: .*: FAIL'
expect_dmesg "$line: summary: $count passed, 0 failed, 0 skipped\$"
expect_dmesg "$line: resident: QPs [0-9]+ and [0-9]+ up, 16 WRs posted\$"
rmmod tilde_verbs_conformance

echo "== module unload with traffic in flight"
insmod "$suite" device=mlx4_0 traffic=1
expect_dmesg "$line: resident: .* 20 WRs posted, traffic running\$"
sleep 2
rmmod tilde_verbs_conformance
expect_dmesg "$line: unload_with_traffic_in_flight: PASS\$"

echo "== device removal with traffic in flight (mlx4_ib unregisters mlx4_0)"
insmod "$suite" device=mlx4_0 traffic=1
sleep 2
rmmod ib_ipoib
rmmod mlx4_ib
expect_dmesg "$line: device_removal_with_traffic_in_flight: PASS\$"
rmmod tilde_verbs_conformance
reject_dmesg 'tilde_verbs_conformance: .*FAIL'
rmmod mlx4_core
reject_dmesg "mlx4_core.*(failed|error|timeout|Error)"
