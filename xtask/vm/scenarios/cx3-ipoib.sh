# The kernel's IPoIB over the emulated ConnectX-3: opensm activates the two ports, the
# kernel's ib_ipoib brings up ib0 and ib1, each moved into a network namespace of its
# own, and they talk across the emulated cable (UD unicast, the broadcast group's
# multicast for ARP and neighbour discovery, SA path queries to opensm over QP1).
# BAR2 is mapped into the guest here (the device watches the doorbell pages), so the
# mapped path carries real traffic in every test run; the other cx3 scenarios take the
# default, doorbells over the socket.
# needs-device: cx3
# doorbells: mapped
# no-modules
. /tilde/guest/lib.sh
. /tilde/guest/ipoib.sh

cx3_active

echo "== ib_ipoib: one interface per port, each in its own namespace"
ib_ipoib_up
ip -d link show "$IB_IF1" | grep -q 'link/infiniband'
# Link-local addresses: the traffic never leaves the guest's emulated cable.
ns_pair "$IB_IF1" "$IB_IF2" 169.254.77

pair_traffic 169.254.77 "$IB_IF1" "$IB_IF2" 64

echo "== RC between the ports with rdma-core's mlx4 provider in user space (data checked)"
port_pair ibv_rc_pingpong -n 200 -c
grep -q '200 iters in' ibv_rc_pingpong-client.log

echo "== UD between the ports from user space (ibv_ud_pingpong, data checked)"
port_pair ibv_ud_pingpong -n 100 -c
grep -q '100 iters in' ibv_ud_pingpong-client.log

echo "== perftest: RDMA WRITE bandwidth, RDMA READ latency, atomics"
port_pair ib_write_bw -n 200 -s 65536
grep -Eq '^ *65536 +200 ' ib_write_bw-client.log
port_pair ib_read_lat -n 200 -s 64
grep -Eq '^ *64 +200 ' ib_read_lat-client.log
port_pair ib_atomic_bw -n 200
grep -Eq '^ *8 +200 ' ib_atomic_bw-client.log

echo "== RDMA CM over the IPoIB addresses (rping, payload verified)"
rping_verified 169.254.77.2 b a

echo "== unload"
ip netns del a
ip netns del b
rmmod ib_ipoib
rmmod mlx4_ib mlx4_core
reject_dmesg "mlx4_core.*(failed|error|timeout|Error)"
