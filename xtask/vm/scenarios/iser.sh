# tilde's iSER initiator (tilde_iser.ko) end to end: the same target, login and data checks
# as iser-reference (the kernel's ib_iser), with tilde_iser registered as the `iser`
# transport instead; unsolicited Data-Out (the target at InitialR2T=No); then the ends that
# must be clean: the target dropping the session under I/O (recovery, nothing lost),
# logout and login again, `rdma link delete` under I/O, module unload after logout; dmesg
# clean throughout.
# needs-module: tilde_iser
. /tilde/guest/lib.sh
. /tilde/guest/iser.sh

iser_target_up
modprobe rdma_cm
modprobe libiscsi
insmod /tilde/ulps/tilde_iser.ko
expect_dmesg 'tilde_iser: iSCSI transport "iser" registered'
iser_iscsid
iser_login
expect_dmesg 'tilde_iser: rxe0: connected to 10\.0\.2\.15:3260'
iser_data_checks
iser_target_drop
# The session of the data checks ended with the drop: its commands' keys were invalidated
# by the target (isert's SEND with Invalidate).
expect_dmesg 'tilde_iser: rxe0: disconnected from 10\.0\.2\.15:3260: [1-9][0-9]* commands registered, [1-9][0-9]* keys invalidated by the target'
expect_dmesg 'tilde_iser: rxe0: connection lost: the target disconnected'
iser_logout
iser_unsolicited_check
# The InitialR2T=No session sent Data-Out PDUs. (Its keys are invalidated by the target,
# or, where 6.12's isert answers without SEND with Invalidate, by LOCAL_INV first.)
expect_dmesg 'tilde_iser: rxe0: disconnected from .*: [1-9][0-9]* commands registered, .*, [1-9][0-9]* unsolicited Data-Out PDUs, [0-9]+ management PDUs in a pool WR$'
reject_dmesg 'received DataOUT for a NON-WRITE command'
iser_login
iser_device_removal
expect_dmesg 'tilde_iser: rxe0: connection lost: the RDMA device is going away'
pkill iscsid || true
iser_target_down
rmmod tilde_iser
expect_dmesg 'tilde_iser: iSCSI transport "iser" unregistered'
# Connections ended only as the scenario ended them ("connection lost"), never by an
# error of either side.
reject_dmesg 'tilde_iser: .*connection failed'
# open-iscsi loads ib_iser by itself when no `iser` transport is registered: it must not
# have been needed.
if grep -q '^ib_iser ' /proc/modules; then
	echo "FAIL: ib_iser was loaded"
	exit 1
fi
