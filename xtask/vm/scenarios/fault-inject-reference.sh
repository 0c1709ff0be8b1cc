# fault-inject's random phase with the kernel's own iSER initiator in tilde_iser's place:
# the LIO target and rxe as there, ib_iser logged in, 1 in 500 of the allocations made
# under ib_iser's code failed while the same rounds of writes and reads run. What it
# reports is the kernel's, not tilde's: it is meant to tell a report of fault-inject's
# random phase that comes from the target or rxe from one tilde_iser causes. So far
# ib_iser allocates nothing under its own code during I/O, and nothing is injected
# (fault-points.txt says how many were; docs/debug-kernel.md).
# no-modules
# test-targets: linux-6.12-debug
# timeout: 600
. /tilde/guest/lib.sh
. /tilde/guest/iser.sh
. /tilde/guest/faults.sh

iser_target_up
modprobe ib_iser
iser_iscsid
iser_login

echo "== iSER writes and reads with 1 in 500 of ib_iser's allocations failed at random"
# shellcheck disable=SC2046 # two words
fault_setup $(module_text ib_iser)
random_phase

iser_logout
pkill iscsid || true
iser_target_down
rmmod ib_iser
cat "$POINTS"
