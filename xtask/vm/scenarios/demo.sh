# What `cargo xtask run` shows a new user: tilde's ConnectX-3 driver in the stock kernel,
# carrying traffic. tilde_mlx4 binds the emulated ConnectX-3, brings the HCA up (with its
# own data-path check: 8 MiB through the fast path, every byte checked) and registers
# tilde_mlx4_0; opensm, over the kernel's MAD layer on tilde_mlx4's QP0s, activates both
# ports; then kernel verbs rings run over tilde_mlx4_0 through the IB core (SENDs of 64 B
# and RDMA WRITEs of 64 KiB between two RC QPs, port 1 to port 1), and everything
# unloads cleanly. Each step's lines are what `cargo xtask run` prints.
# needs-device: cx3
# needs-module: tilde_mlx4
. /tilde/guest/lib.sh

echo "== tilde_mlx4 binds the emulated ConnectX-3 and registers tilde_mlx4_0"
insmod /tilde/drivers/tilde_mlx4.ko
wait_dmesg 'tilde_mlx4: [0-9a-f:.]+: InfiniBand device tilde_mlx4_0 registered'
grep -E 'tilde_mlx4: ' "$(kernel_log)" | sed 's/^\[[ 0-9.]*\] //' | tee mlx4.log

ib_activate tilde_mlx4_0

echo "== traffic through tilde_mlx4: kernel verbs rings over tilde_mlx4_0"
insmod /tilde/suites/tilde_verbs_conformance.ko device=tilde_mlx4_0 bench=2000
expect_dmesg 'tilde_verbs_conformance: tilde_mlx4_0: bench: rc_send_64B x 2000: safe [0-9]+ ns/op'
expect_dmesg 'tilde_verbs_conformance: tilde_mlx4_0: bench: rdma_write_64KiB x 500: safe [0-9]+ ns/op'
reject_dmesg 'bench: .*FAIL'
rmmod tilde_verbs_conformance

echo "== unload"
ib_stop_sm
rmmod ib_umad
rmmod tilde_mlx4
expect_dmesg 'tilde_mlx4: [0-9a-f:.]+: InfiniBand device tilde_mlx4_0 unregistered$'
expect_dmesg 'tilde_mlx4: [0-9a-f:.]+: HCA closed, every page given back$'
