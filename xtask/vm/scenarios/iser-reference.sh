# The kernel's own iSER, end to end, as the reference tilde's iSER initiator is held to:
# the LIO target with an iSER portal on rxe0's address and a 256 MiB RAM LUN, open-iscsi
# logging in over the `iser` transport (ib_iser), the data checks of iser.sh, logout,
# unload, dmesg clean. The `iser` scenario runs the same with tilde_iser.
# no-modules
. /tilde/guest/lib.sh
. /tilde/guest/iser.sh

iser_target_up
modprobe ib_iser
iser_iscsid
iser_login
iser_data_checks
iser_logout
pkill iscsid || true
iser_target_down
rmmod ib_iser
