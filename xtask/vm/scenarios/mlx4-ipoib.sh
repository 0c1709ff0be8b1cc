# IPoIB over tilde_mlx4: the emulated ConnectX-3 bound by tilde's driver, not mlx4_ib.
# opensm activates both ports through tilde's QP0s; the kernel's own ib_ipoib brings up
# ib0 and ib1 over tilde_mlx4_0, each moved into a network namespace of its own, and they
# talk across the emulated cable: ARP and neighbour discovery through the broadcast and
# solicited-node groups (SA joins, then tilde_mlx4's multicast attach: the device finds
# each group by walking the hash chain the driver wrote), IPv4 and IPv6 ping, 64 MiB over
# TCP with the same SHA-256 at both ends. Then tilde_ipoib takes port 1 against
# ib_ipoib's port 2: Rust on Rust on the wire of a Rust device driver, ping and TCP both
# ways, UDP to a multicast group, both in connected mode (RC connections each way through
# the IB CM over tilde_mlx4: 64 KiB pings, 64 MiB over TCP each way) and back, opensm
# restarted (its client reregistration, which tilde_mlx4 reports, makes tilde_ipoib leave
# and rejoin every group; ping and multicast go on), port 1 taken down and brought back
# by opensm under traffic. Everything unloads with nothing left attached.
# needs-device: cx3
# needs-module: tilde_mlx4
# needs-module: tilde_ipoib
# timeout: 600
. /tilde/guest/lib.sh
. /tilde/guest/ipoib.sh

insmod /tilde/drivers/tilde_mlx4.ko
ib_activate tilde_mlx4_0

echo "== the kernel's ib_ipoib over tilde_mlx4_0: one interface per port"
ib_ipoib_up
ns_pair "$IB_IF1" "$IB_IF2" 169.254.77
# The broadcast group's MTU (2048 on this fabric) less the 4-byte header.
ip -n a link show "$IB_IF1" | grep -q 'mtu 2044'
# The QPs as the device has them (QUERY_QP through `query_qp`): IPoIB's UD QP, the MAD
# layer's QP0 and QP1, all in RTS.
rdma resource show qp link tilde_mlx4_0/1 | tee qps.log
grep -Eq 'type UD state RTS .*comm \[ib_ipoib\]' qps.log || { echo "FAIL: ib_ipoib's UD QP is not listed in RTS"; exit 1; }
grep -Eq 'lqpn 0 type SMI state RTS' qps.log || { echo "FAIL: QP0 is not listed in RTS"; exit 1; }
grep -Eq 'lqpn 1 type GSI state RTS' qps.log || { echo "FAIL: QP1 is not listed in RTS"; exit 1; }

pair_traffic 169.254.77 "$IB_IF1" "$IB_IF2" 64

echo "== ib_ipoib unloaded: every group detached, every object gone"
ip netns del a
ip netns del b
modprobe -r ib_ipoib
reject_dmesg 'tilde_mlx4: .*multicast'

echo "== tilde_ipoib on port 1 against ib_ipoib on port 2, both over tilde_mlx4_0"
ib_ipoib_up
tilde_ipoib_up tilde_mlx4_0:1
ns_pair "$TILDE_IF" "$IB_IF2" 169.254.78
ip netns exec a ping -c 3 -W 10 169.254.78.2
ip netns exec b ping -c 3 -W 10 169.254.78.1
ping6_pair "$TILDE_IF" "$IB_IF2"
tcp_transfer a b 169.254.78.2 32
tcp_transfer b a 169.254.78.1 32
udp_multicast a 169.254.78.1 b 169.254.78.2
udp_multicast b 169.254.78.2 a 169.254.78.1
echo "== connected mode on both sides over tilde_mlx4 (ib_ipoib without an SRQ: 16 receive SGEs)"
connected_mode a "$TILDE_IF" b "$IB_IF2"
ip netns exec a ping -c 3 -W 10 169.254.78.2
ip netns exec b ping -c 3 -W 10 169.254.78.1
ip netns exec a ping -c 2 -W 10 -s 65000 -M do 169.254.78.2
tcp_transfer a b 169.254.78.2 64
tcp_transfer b a 169.254.78.1 64
expect_dmesg 'tilde_ipoib: tilde_mlx4_0/1: connected to QPN'
datagram_mode a "$TILDE_IF" b "$IB_IF2"
ip netns exec a ping -c 3 -W 10 169.254.78.2
echo "== opensm restarted: its ClientReregister (seen by tilde_mlx4) makes tilde_ipoib rejoin"
rereg='tilde_ipoib: tilde_mlx4_0/1: client reregister'
before=$(count_dmesg "$rereg")
opensm_restart tilde_mlx4_0
# opensm's first sweep, which sets it, takes a few seconds under TCG.
for i in $(seq 300); do
	[ "$(count_dmesg "$rereg")" -gt "$before" ] && break
	sleep 0.1
done
[ "$(count_dmesg "$rereg")" -gt "$before" ] ||
	{ echo "FAIL: tilde_ipoib heard of no client reregistration"; exit 1; }
ip -n a neigh flush dev "$TILDE_IF"
ip -n b neigh flush dev "$IB_IF2"
ip netns exec a ping -c 3 -W 10 169.254.78.2
ip netns exec b ping -c 3 -W 10 169.254.78.1
udp_multicast a 169.254.78.1 b 169.254.78.2
udp_multicast b 169.254.78.2 a 169.254.78.1
echo "== port 1 taken down under traffic (through tilde_mlx4's process_mad): tilde_ipoib follows"
port_flap tilde_mlx4_0 1 a "$TILDE_IF" b 169.254.78.2 169.254.78.1
ip -n a -s link show "$TILDE_IF"

echo "== unload: tilde_ipoib, ib_ipoib, then tilde_mlx4 with the MAD layer's objects only"
ip netns del a
ip netns del b
rmmod tilde_ipoib
expect_dmesg 'tilde_ipoib: tilde_mlx4_0/1: released'
modprobe -r ib_ipoib
reject_dmesg 'tilde_ipoib.*(leaking|failed)'
# An object the IB core refused to destroy (a QP still attached to a group).
reject_dmesg 'tilde_rdma: .*leaking'
reject_dmesg 'tilde_mlx4: .*(failed|refused|multicast)'
ib_stop_sm
rmmod ib_umad
rmmod tilde_mlx4
expect_dmesg 'tilde_mlx4: [0-9a-f:.]+: HCA closed, every page given back$'
