# Allocation failures, on the debug kernel's fault injection (docs/debug-kernel.md).
# Systematic first: each path runs with its 1st, 2nd, ... allocation failed (the task's
# fail-nth) until a run has nothing injected; counted are the allocations made under a
# module's code (the failslab and fail_page_alloc stack filter), of every size, with
# GFP_KERNEL too. The paths: each tilde module's load (tilde_loopback's makes its device);
# each object its conformance module's `create` parameter makes (PD, CQ, QP, MR, AH, CM
# id) over rxe0 and over tilde_lo0; an iSER login and logout (iscsid's task, counting what
# runs under tilde_iser). Every failure must come back as an error (a failed insmod, write
# or login), the module must unload after, and kmemleak's scan at the end finds nothing
# of tilde's (the verdict). Then at random: 1 in 500 of the allocations under tilde_iser
# fail while the iSER data checks run: every byte reads back the same, or the writer gets
# an error.
# needs-module: tilde_iser
# test-targets: linux-6.12-debug
# timeout: 900
. /tilde/guest/lib.sh
. /tilde/guest/iser.sh
. /tilde/guest/faults.sh

# deps KO: the kernel's modules KO links against (insmod does not resolve them).
deps() {
	local dep
	for dep in $(modinfo -F depends "$1" | tr , ' '); do
		case "$dep" in tilde_*) ;; *) modprobe "$dep" ;; esac
	done
}

# systematic NAME FAILNTH-ARGS...: one path under failnth; its count into $POINTS.
systematic() {
	local name=$1 points allocations start=$SECONDS
	shift
	echo "== systematic: $name"
	/tmp/failnth "$@" > "/tilde/out/failnth-$name.log" 2>&1 || {
		tail -n 20 "/tilde/out/failnth-$name.log"
		echo "FAIL: $name"
		return 1
	}
	points=$(awk '/^points:/ {print $2}' "/tilde/out/failnth-$name.log")
	allocations=$(awk '/^allocations:/ {print $2}' "/tilde/out/failnth-$name.log")
	# Outcomes of the injected runs, counted (none when the path allocates nothing).
	grep -E -o ': injected: [A-Za-z0-9]+' "/tilde/out/failnth-$name.log" | sort | uniq -c |
		sed 's/^/   /' || true
	if [ -n "$allocations" ]; then
		echo "$name: $allocations injection points, $points of them injected ($1 $2), $((SECONDS - start)) s" | tee -a "$POINTS"
	else
		echo "$name: $points injection points, $((SECONDS - start)) s" | tee -a "$POINTS"
	fi
}

fault_setup "$MODULES_START" "$MODULES_END"

echo "== module loads"
# stage2 loaded tilde_core (its file has a load-order prefix); rxe0 stays while it comes
# and goes.
core=/tmp/tilde_core.ko
cp /tilde/modules/*tilde_core.ko "$core"
rmmod tilde_core
deps "$core"
systematic load-tilde_core load "$core"
insmod "$core"
ip link add tl0 type dummy
ip link set tl0 up
systematic load-tilde_loopback load /tilde/drivers/tilde_loopback.ko netdev=tl0
systematic load-tilde_verbs_conformance load /tilde/suites/tilde_verbs_conformance.ko "device=rxe0 cases=0"
for ko in /tilde/ulps/tilde_iser.ko /tilde/ulps/tilde_ipoib.ko; do
	deps "$ko"
	systematic "load-$(basename "$ko" .ko)" load "$ko"
done

echo "== object paths"
insmod /tilde/drivers/tilde_loopback.ko netdev=tl0
for device in rxe0 tilde_lo0; do
	insmod /tilde/suites/tilde_verbs_conformance.ko device=$device cases=0
	create=/sys/module/tilde_verbs_conformance/parameters/create
	for path in pd cq qp mr ah cm_id; do
		systematic "$device-$path" write "$create" "$path"
	done
	rmmod tilde_verbs_conformance
done
rmmod tilde_loopback

echo "== iSER login and logout, iscsid's allocations under tilde_iser"
iser_target_up
deps /tilde/ulps/tilde_iser.ko
insmod /tilde/ulps/tilde_iser.ko
iser_iscsid
# A failed login is not tried again: the login that failed is the run's result (iscsid
# would otherwise try again for 8 login timeouts, the failure absorbed in the end). Set
# in iscsid.conf, where each new node record (iser_login makes one) takes its defaults
# from.
sed -i '/^node.session.initial_login_retry_max/d' /etc/iscsi/iscsid.conf
echo "node.session.initial_login_retry_max = 0" >> /etc/iscsi/iscsid.conf
iscsiadm -m node -o new -T "$ISER_TARGET" -p "$ISER_ADDR:3260" -I iser > /dev/null
# shellcheck disable=SC2046 # two words
fault_setup $(module_text tilde_iser)
# A login as iser_login makes it (its disk's runtime PM kept on: a logout that finds that
# work pending WARNs in the kernel's own iSCSI class, iser.sh says why), then the logout.
# errexit: a login that failed ends the run there, not in iser_login's 10 s of looking for
# a disk (100 to 200 s on this kernel, an iscsiadm each time).
cat > /tmp/login-logout <<'EOF'
#!/bin/bash
. /tilde/guest/lib.sh
. /tilde/guest/iser.sh
(
	set -e
	iser_login
) > /dev/null 2>&1
status=$?
iser_logout > /dev/null 2>&1
exit $status
EOF
chmod +x /tmp/login-logout
# iscsid is two processes, the daemon and its logger: the daemon's is in its pid file.
# A login makes about 4000 allocations under tilde_iser (its connection's buffers and
# work requests, 128 tasks' worth, allocated up front), and a run that logs in takes
# 7 s on this kernel: every point of the first and last 16 fails, and every 31st
# between (a prime: the per-task loop's allocations each fail somewhere).
systematic iser-login --sample 16,31 task "$(cat /run/iscsid.pid)" -- /tmp/login-logout
# Whatever the failures left, the session table is empty and a login works.
refute "a session outlived its logout" iscsiadm -m session
iser_login

echo "== iSER writes and reads with 1 in 500 of tilde_iser's allocations failed at random"
random_phase

iser_logout
pkill iscsid || true
iser_target_down
rmmod tilde_iser
cat "$POINTS"
