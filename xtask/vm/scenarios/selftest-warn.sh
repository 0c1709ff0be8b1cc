# Runner self-test: a module that WARNs must fail the run even though this script
# succeeds. `cargo xtask test` requires this failure.
# expect-failure: WARNING: xtask/selftest/warn_selftest.rs
insmod /tilde/selftest/tilde_warn_selftest.ko
rmmod tilde_warn_selftest
