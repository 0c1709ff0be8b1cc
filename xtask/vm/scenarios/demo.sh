# What `cargo xtask run` shows a new user: tilde's modules in the stock kernel, each
# carrying traffic. tilde_core's device client watches rxe0 while ibv_rc_pingpong runs RC
# traffic over it; tilde_mlx4 binds the emulated ConnectX-3, brings the HCA up and moves
# SENDs between two of its QPs with its own fast path (8 MiB, every byte checked); then both
# unload cleanly. Each step's lines are what `cargo xtask run` prints.
# needs-device: cx3
# needs-module: tilde_mlx4
. /tilde/guest/lib.sh

echo "== tilde_core in the stock kernel, watching rxe0"
expect_dmesg 'tilde_core: rxe0: added: node_guid [0-9a-f]{4}(:[0-9a-f]{4}){3} ports 1$'

echo "== RC traffic over rxe0 (ibv_rc_pingpong, 1000 round trips of 4 KiB)"
ibv_rc_pingpong -d rxe0 -g 1 -n 1000 -c > server.log 2>&1 &
server=$!
wait_listening 18515
ibv_rc_pingpong -d rxe0 -g 1 -n 1000 -c 127.0.0.1 | tee client.log
wait "$server"
grep -q '1000 iters in' client.log

echo "== tilde_mlx4 binds the emulated ConnectX-3 and moves a SEND through it"
insmod /tilde/drivers/tilde_mlx4.ko
wait_dmesg 'tilde_mlx4: [0-9a-f:.]+: data path: [0-9]+ bytes sent from QP 0x[0-9a-f]+ to QP 0x[0-9a-f]+ by the fast path'
grep -E 'tilde_mlx4: ' "$(kernel_log)" | sed 's/^\[[ 0-9.]*\] //' | tee mlx4.log

echo "== unload"
rmmod tilde_mlx4
expect_dmesg 'tilde_mlx4: [0-9a-f:.]+: HCA closed, every page given back$'
