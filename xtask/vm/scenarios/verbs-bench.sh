# The safe-vs-raw benchmark of tilde's verbs API over rxe0 (tilde_verbs_conformance.ko
# with bench=N). A benchmark, not a test: `cargo xtask test` skips it; run it with
# `cargo xtask vm verbs-bench`. It checks that both loops ran and reported, never how
# fast; the numbers are in the scenario log and dmesg.
# benchmark
. /tilde/guest/lib.sh

insmod /tilde/suites/tilde_verbs_conformance.ko device=rxe0 bench=4000
expect_dmesg 'tilde_verbs_conformance: rxe0: bench: rc_send_64B x 4000: safe [0-9]+ ns/op, raw [0-9]+ ns/op, raw/safe [0-9]+\.[0-9]{3}$'
expect_dmesg 'tilde_verbs_conformance: rxe0: bench: rdma_write_64KiB x 1000: safe [0-9]+ ns/op, raw [0-9]+ ns/op, raw/safe [0-9]+\.[0-9]{3}$'
reject_dmesg 'bench: .*FAIL'
rmmod tilde_verbs_conformance
