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
