# Runner self-test: a module that WARNs must fail the run even though this script
# succeeds. `cargo xtask test` requires this failure: the WARNING line of the module's
# own function (its format differs between kernels; the function is in both).
# expect-failure: tilde_warn_selftest_warn+
insmod /tilde/selftest/tilde_warn_selftest.ko
rmmod tilde_warn_selftest
