# tilde_mlx4.ko: the ConnectX-3 fast path (post_send, post_recv, poll_cq, req_notify_cq)
# in the kernel, over the kernel's queue memory, barriers, atomics and UAR writes. With no
# ConnectX-3 here, the module's load runs the fast path's self-test, the CPU playing the
# device (hw-mlx4/src/selftest.rs); a failure fails the insmod with a dmesg line.
# needs-module: tilde_mlx4
. /tilde/guest/lib.sh

driver=/tilde/drivers/tilde_mlx4.ko

# What the fast path takes from rdma_core (kernel_api's atomics and barriers) is inline by
# design; the module imports tilde_core's symbols for its PCI side (rdma_core::pci).
echo "== the driver loads beside tilde_core"
insmod "$driver"
grep '^tilde_mlx4 ' /proc/modules

echo "== the self-test: every WQE, doorbell, CQE and arm as the device expects them"
expect_dmesg 'tilde_mlx4: fast path self-test passed: 4096 rounds, 12288 send and 4096 receive WQEs, 16384 completions, 128 CQ laps, 512 arms$'
reject_dmesg 'tilde_mlx4: .*(failed|refused)'

echo "== unload"
rmmod tilde_mlx4
expect_dmesg 'tilde_mlx4: unloading$'
refute "tilde_mlx4 is still loaded" grep -q '^tilde_mlx4 ' /proc/modules
