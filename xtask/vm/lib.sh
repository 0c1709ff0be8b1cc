# Helpers for scenarios (sourced; the scenario runs under `bash -eu -o pipefail`).

# expect_dmesg REGEX: fail unless the kernel log has a line matching REGEX.
expect_dmesg() {
	if ! dmesg | grep -E -q -- "$1"; then
		echo "FAIL: no dmesg line matches: $1"
		return 1
	fi
	echo "ok: dmesg: $(dmesg | grep -E -- "$1" | tail -n 1)"
}

# wait_dmesg REGEX [SECONDS]: like expect_dmesg, for messages that come asynchronously.
wait_dmesg() {
	local i
	for ((i = 0; i < ${2:-10} * 10; i++)); do
		dmesg | grep -E -q -- "$1" && break
		sleep 0.1
	done
	expect_dmesg "$1"
}
