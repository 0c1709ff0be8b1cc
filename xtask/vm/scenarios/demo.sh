# What `cargo xtask run` shows a new user: tilde's stack in the stock kernel, carrying
# traffic. tilde_mlx4 binds the emulated ConnectX-3, brings the HCA up (with its own
# data-path check: 8 MiB through the fast path, every byte checked) and registers
# tilde_mlx4_0; opensm, over the kernel's MAD layer on tilde_mlx4's QP0s, activates both
# ports; kernel verbs rings run over tilde_mlx4_0 through the IB core (SENDs of 64 B and
# RDMA WRITEs of 64 KiB between two RC QPs). Then the two ULPs over tilde's driver:
# tilde_ipoib on port 1 talks to the kernel's ib_ipoib on port 2 (ping, 32 MiB over TCP,
# checked), and tilde_iser logs in to LIO's iSER target on the IPoIB address (64 MiB
# written and read back, checked). Everything unloads cleanly. The `summary:` lines are
# what `cargo xtask run` sums up.
# needs-device: cx3
# needs-module: tilde_mlx4
# needs-module: tilde_ipoib
# needs-module: tilde_iser
# timeout: 420
. /tilde/guest/lib.sh
. /tilde/guest/ipoib.sh
. /tilde/guest/iser.sh

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

echo "== IPoIB: tilde_ipoib on port 1, the kernel's ib_ipoib on port 2, over tilde_mlx4_0"
ib_ipoib_up
tilde_ipoib_up tilde_mlx4_0:1
ns_pair "$TILDE_IF" "$IB_IF2" 169.254.78
ip netns exec a ping -c 3 -W 10 169.254.78.2 | tee ping.log
tcp_transfer a b 169.254.78.2 32
rtt=$(sed -n 's/.*= [0-9.]*\/\([0-9.]*\)\/.*/\1/p' ping.log)
printf 'summary: tilde_ipoib → ib_ipoib: ping %.1f ms average, 32 MiB over TCP in %.2f s (SHA-256 equal)\n' "$rtt" "$TCP_SECONDS"
ip netns del a
ip netns del b
rmmod tilde_ipoib

echo "== iSER: tilde_iser logs in to LIO's isert on ib_ipoib's address, over tilde_mlx4_0"
ISER_ADDR=169.254.78.2
ipoib_addr_up "$IB_IF2" "$ISER_ADDR"
iser_target_up
modprobe rdma_cm
modprobe libiscsi
insmod /tilde/ulps/tilde_iser.ko
iser_iscsid
iser_login
head -c $((64 << 20)) /dev/urandom > /tmp/pattern
start=$(date +%s.%N)
dd if=/tmp/pattern of="$ISER_DEV" bs=1M oflag=direct status=none
mid=$(date +%s.%N)
read=$(dd if="$ISER_DEV" bs=1M count=64 iflag=direct status=none | sha256sum | cut -d' ' -f1)
end=$(date +%s.%N)
[ "$read" = "$(sha256sum < /tmp/pattern | cut -d' ' -f1)" ] || { echo "FAIL: the LUN gave back other bytes"; exit 1; }
printf 'summary: tilde_iser → LIO: 64 MiB written in %.2f s, read back in %.2f s (SHA-256 equal)\n' \
	"$(echo "$mid - $start" | bc)" "$(echo "$end - $mid" | bc)"
iser_logout
pkill iscsid || true
iser_target_down
rmmod tilde_iser
rmmod ib_ipoib

echo "== unload"
ib_stop_sm
rmmod ib_umad
rmmod tilde_mlx4
expect_dmesg 'tilde_mlx4: [0-9a-f:.]+: InfiniBand device tilde_mlx4_0 unregistered$'
expect_dmesg 'tilde_mlx4: [0-9a-f:.]+: HCA closed, every page given back$'
