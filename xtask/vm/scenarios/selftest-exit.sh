# Runner self-test: a scenario that exits non-zero must fail the run even with a clean
# dmesg. `cargo xtask test` requires this failure.
# expect-failure: the scenario exited with status 3
echo "failing on purpose"
exit 3
