# The suite's kernel verbs rings over tilde_mlx4 and over the kernel's mlx4_core +
# mlx4_ib on the same emulated ConnectX-3, in one boot, the drivers taking the device in
# turn (tilde, upstream, tilde, upstream: interleaved, so the machine's drift falls on
# both). A benchmark, not a test: `cargo xtask test` skips it; run it with
# `cargo xtask vm mlx4-bench`. It checks that every ring ran and reported, never how
# fast; the numbers are the `bench:` lines of the scenario log (the device model's
# cost is in both).
# benchmark
# needs-device: cx3
# needs-module: tilde_mlx4
. /tilde/guest/lib.sh

suite=/tilde/suites/tilde_verbs_conformance.ko

# ring DEV: the suite's rings over DEV once, their lines printed.
ring() {
	insmod "$suite" device="$1" bench=2000
	expect_dmesg "tilde_verbs_conformance: $1: bench: rdma_write_64KiB x 500: safe [0-9]+ ns/op"
	rmmod tilde_verbs_conformance
}

for round in 1 2 3 4; do
	echo "== round $round: tilde_mlx4"
	insmod /tilde/drivers/tilde_mlx4.ko
	ib_activate tilde_mlx4_0
	ring tilde_mlx4_0
	ib_stop_sm
	rmmod ib_umad
	rmmod tilde_mlx4

	echo "== round $round: mlx4_core + mlx4_ib"
	cx3_active
	ring mlx4_0
	ib_stop_sm
	rmmod ib_umad
	rmmod mlx4_ib mlx4_core
done
grep 'bench:' "$(kernel_log)" | sed 's/^\[[ 0-9.]*\] //'
reject_dmesg 'bench: .*FAIL'
