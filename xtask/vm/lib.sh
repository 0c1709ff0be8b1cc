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
	rc_send_with_imm rc_drain_flushes_posted_receives
	frwr_rdma_write frwr_rdma_read frwr_rdma_write_with_imm rc_receive_too_small frwr_invalidate_refuses_access rc_bad_rkey_then_reset_and_reuse rc_atomics
	rc_rnr_retry_then_delivery rc_rnr_retry_exceeded
	ud_send_with_grh ud_drain_with_sends_outstanding
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
