# Helpers for scenarios (sourced; the scenario runs under `bash -eu -o pipefail`).
#
# The kernel log is always read into a file before grep: `dmesg | grep -q` under pipefail
# fails at random when grep exits at its first match and dmesg gets SIGPIPE.

# kernel_log: the current kernel log, as a file name.
kernel_log() {
	dmesg > /tmp/kernel.log
	echo /tmp/kernel.log
}

# expect_dmesg REGEX: fail unless the kernel log has a line matching REGEX.
expect_dmesg() {
	local log
	log=$(kernel_log)
	if ! grep -E -q -- "$1" "$log"; then
		echo "FAIL: no dmesg line matches: $1"
		return 1
	fi
	echo "ok: dmesg: $(grep -E -- "$1" "$log" | tail -n 1)"
}

# wait_dmesg REGEX: like expect_dmesg, for a line that comes asynchronously (waits up
# to 10 s).
wait_dmesg() {
	local tries=0
	until grep -E -q -- "$1" "$(kernel_log)"; do
		tries=$((tries + 1))
		if [ "$tries" -ge 100 ]; then
			echo "FAIL: no dmesg line matches within 10 s: $1"
			return 1
		fi
		sleep 0.1
	done
	echo "ok: dmesg: $(grep -E -- "$1" "$(kernel_log)" | tail -n 1)"
}

# reject_dmesg REGEX: fail if the kernel log has a line matching REGEX.
# still_running PID WHAT: fails unless the background job PID is still running: the step
# WHAT is meant to happen under its I/O.
still_running() {
	if ! kill -0 "$1" 2>/dev/null; then
		echo "FAIL: the I/O had finished before $2: nothing was under I/O"
		return 1
	fi
}

# refute WHAT CMD...: fails, naming WHAT, if CMD succeeds. A scenario cannot say `! CMD`:
# bash -e ignores a negated command's status, so the line could never fail the script
# (xtask's tests reject such lines).
refute() {
	local what=$1
	shift
	if "$@"; then
		echo "FAIL: $what"
		return 1
	fi
}

reject_dmesg() {
	local log
	log=$(kernel_log)
	if grep -E -q -- "$1" "$log"; then
		echo "FAIL: unexpected dmesg line: $(grep -E -- "$1" "$log" | head -n 1)"
		return 1
	fi
	echo "ok: no dmesg line matches: $1"
}

# count_dmesg REGEX: how many kernel log lines match REGEX.
count_dmesg() {
	grep -E -c -- "$1" "$(kernel_log)" || true
}

# wait_listening PORT: wait (up to 30 s) until a TCP socket listens on PORT. The test
# tools' servers take more than a second to start when the host is busy (TCG), so a
# client started after a fixed sleep can find nobody there.
wait_listening() {
	local i
	for i in $(seq 300); do
		if ss -Hltn "sport = :$1" | grep -q .; then
			return 0
		fi
		sleep 0.1
	done
	echo "FAIL: nothing listens on TCP port $1"
	return 1
}

# The verbs conformance cases that pass on every device (tilde_verbs_conformance.ko prints
# one line per case); RDMA CM's two, which need the IB CM, come after them.
CONFORMANCE_CASES="device_query rc_connect
	rc_send_recv_1 rc_send_recv_64 rc_send_recv_4096 rc_send_recv_65536 rc_send_recv_1048576
	rc_send_with_imm rc_send_and_recv_cqs_apart rc_drain_flushes_posted_receives
	frwr_rdma_write frwr_rdma_read frwr_rdma_write_with_imm frwr_write_with_imm_waits_for_a_receive frwr_read_only_region_refuses_write frwr_other_pd_refused rc_receive_too_small frwr_invalidate_refuses_access rc_bad_rkey_then_reset_and_reuse rc_atomics
	rc_rnr_retry_then_delivery rc_rnr_retry_exceeded
	ud_send_with_grh ud_wrong_qkey_dropped ud_drain_with_sends_outstanding
	rc_softirq_cq rc_workqueue_cq rejected_post_hands_the_wr_back
	wrong_qp_type_refused qp_dropped_in_reset_and_init frwr_reregistration_retires_the_old_key
	sg_region_lends_pages_until_invalidated
	device_by_name cq_resize bvec_send_and_receive"
CONFORMANCE_CM_CASES="cm_connect_send_disconnect cm_reject"

# expect_cases PREFIX CASES...: fail unless each case has its PASS line; prints the count.
expect_cases() {
	local prefix=$1 count=0 case
	shift
	for case in "$@"; do
		expect_dmesg "$prefix: $case: PASS\$" >&2 || return 1
		count=$((count + 1))
	done
	echo "$count"
}

# cx3_function: the PCI address of the emulated ConnectX-3 (15b3:1003); fails if there is
# none.
cx3_function() {
	local d
	for d in /sys/bus/pci/devices/*; do
		if [ "$(cat "$d/vendor")" = 0x15b3 ] && [ "$(cat "$d/device")" = 0x1003 ]; then
			basename "$d"
			return 0
		fi
	done
	echo "FAIL: no 15b3:1003 function" >&2
	return 1
}

# cx3_raise_catas ADDR: the emulated ConnectX-3 at PCI address ADDR raises a catastrophic
# error (its test capability's trigger in config space, not the hardware's:
# docs/cx3-device.md); a driver sees it in the error buffer it polls every 5 s.
cx3_raise_catas() {
	python3 -c 'import struct, sys
with open(sys.argv[1], "r+b") as config:
    config.seek(0xb4)
    config.write(struct.pack("<I", 0xca7a5))' "/sys/bus/pci/devices/$1/config"
}

# tilde_mlx4_catas ADDR: a catastrophic error raised on the ConnectX-3 at ADDR, and
# tilde_mlx4's recovery from it (its poll reads the error buffer every 5 s, as
# mlx4_core's does): the function reset, everything taken back, the HCA up again.
tilde_mlx4_catas() {
	local i
	cx3_raise_catas "$1"
	for i in $(seq 200); do
		grep -q "tilde_mlx4: $1: recovered from the catastrophic error" "$(kernel_log)" && break
		sleep 0.1
	done
	expect_dmesg "tilde_mlx4: $1: catastrophic error: word 0 of the error buffer reads 0xca7a5; resetting the function\$"
	expect_dmesg "tilde_mlx4: $1: reset: the device forgot everything, every page taken back\$"
	expect_dmesg "tilde_mlx4: $1: recovered from the catastrophic error\$"
}

# cx3_active: the emulated ConnectX-3 bound by the kernel's mlx4_core and mlx4_ib, and
# opensm (over ib_umad, bound to port 1) running until the guest powers off, with both
# ports ACTIVE.
cx3_active() {
	modprobe mlx4_core
	modprobe mlx4_ib
	ib_activate mlx4_0
}

# ib_stop_sm: opensm stopped, and gone (its umad files closed), so ib_umad can unload.
# One whose port went away under it (its device unregistered) may not heed SIGTERM any
# more: it is killed after 5 s.
ib_stop_sm() {
	local i
	pkill opensm || true
	for i in $(seq 100); do
		pgrep -x opensm > /dev/null || return 0
		[ "$i" = 50 ] && { pkill -9 opensm || true; }
		sleep 0.1
	done
	echo "FAIL: opensm did not exit within 10 s"
	return 1
}

# ib_activate DEV: opensm (over ib_umad, bound to DEV's port 1) running until the guest
# powers off, and both of DEV's ports ACTIVE under it (the emulated cable joins them).
ib_activate() {
	local dev=$1 i guid
	modprobe ib_umad
	for i in $(seq 100); do
		[ -e "/sys/class/infiniband/$dev/ports/2" ] && break
		sleep 0.1
	done
	echo "== opensm activates both ports"
	guid=$(awk -F: '{printf "0x%s%s%s%s", $5, $6, $7, $8}' "/sys/class/infiniband/$dev/ports/1/gids/0")
	opensm -g "$guid" -f /tmp/opensm.log > /tmp/opensm.out 2>&1 &
	for i in $(seq 300); do
		[ "$(rdma link show | grep -c "$dev/[12] .*state ACTIVE")" = 2 ] && break
		sleep 0.1
	done
	rdma link show | grep "$dev"
	if [ "$(rdma link show | grep -c "$dev/[12] .*state ACTIVE")" != 2 ]; then
		echo "FAIL: opensm did not activate both ports within 30 s"
		tail -n 30 /tmp/opensm.log
		return 1
	fi
}

# port_pair TOOL ARGS...: an rdma-core or perftest tool between the device's two ports,
# the server on port 2 and the client on port 1, exchanging their QP numbers over
# loopback TCP; the client's output goes to TOOL-client.log.
port_pair() {
	local tool=$1 server
	shift
	"$tool" -d mlx4_0 -i 2 "$@" > "$tool-server.log" 2>&1 &
	server=$!
	wait_listening 18515
	"$tool" -d mlx4_0 -i 1 "$@" 127.0.0.1 | tee "$tool-client.log"
	wait "$server"
}

# rping_verified ADDR [SERVER_NS CLIENT_NS]: RDMA CM's rping to ADDR, ten pings with the
# payload verified on both sides (-V), the server and the client in the given network
# namespaces (none: the current one).
rping_verified() {
	local addr=$1 in_server=() in_client=() server connected=0 attempt
	[ -n "${2:-}" ] && in_server=(ip netns exec "$2")
	[ -n "${3:-}" ] && in_client=(ip netns exec "$3")
	"${in_server[@]}" rping -s -a "$addr" -C 10 -V > rping-server.log 2>&1 &
	server=$!
	# The server listens through RDMA CM, which `ss` does not show: the client retries
	# until it is there.
	for attempt in $(seq 10); do
		if "${in_client[@]}" rping -c -a "$addr" -C 10 -V -v > rping-client.log 2>&1; then
			connected=1
			break
		fi
		echo "rping: attempt $attempt: no server yet"
		sleep 1
	done
	tail -n 2 rping-client.log
	if [ "$connected" != 1 ] || ! wait "$server"; then
		echo "FAIL: rping to $addr:"
		cat rping-server.log
		return 1
	fi
}
