# tilde's iSER initiator (tilde_iser.ko) end to end: the same target, login and data checks
# as iser-reference (the kernel's ib_iser), with tilde_iser registered as the `iser`
# transport instead; then logout, unload, dmesg clean.
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
iser_logout
pkill iscsid || true
iser_target_down
rmmod tilde_iser
expect_dmesg 'tilde_iser: iSCSI transport "iser" unregistered'
# open-iscsi loads ib_iser by itself when no `iser` transport is registered: it must not
# have been needed.
if grep -q '^ib_iser ' /proc/modules; then
	echo "FAIL: ib_iser was loaded"
	exit 1
fi
