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

cx3_active

echo "== ib_ipoib: one interface per port, each in its own namespace"
modprobe ib_ipoib
for i in $(seq 100); do
	[ -e /sys/class/net/ib0 ] && [ -e /sys/class/net/ib1 ] && break
	sleep 0.1
done
ip link show ib0
ip link show ib1
ip -d link show ib0 | grep -q 'link/infiniband'
ip netns add a
ip netns add b
ip link set ib0 netns a
ip link set ib1 netns b
for ns in a b; do ip -n $ns link set lo up; done
# Link-local addresses: the traffic never leaves the guest's emulated cable.
ip -n a addr add 169.254.77.1/24 dev ib0
ip -n b addr add 169.254.77.2/24 dev ib1
ip -n a link set ib0 up
ip -n b link set ib1 up
for i in $(seq 300); do
	ip -n a link show ib0 | grep -q LOWER_UP && ip -n b link show ib1 | grep -q LOWER_UP && break
	sleep 0.1
done
ip -n a link show ib0
ip -n b link show ib1

echo "== ping over IPv4 (ARP through the broadcast group, then UD unicast)"
ip netns exec a ping -c 3 -W 10 169.254.77.2
ip netns exec b ping -c 3 -W 10 169.254.77.1

echo "== ping over IPv6 (neighbour discovery through the solicited-node groups)"
for i in $(seq 100); do
	ip -n b -6 addr show dev ib1 scope link | grep -q 'inet6 .*scope link' && ! ip -n b -6 addr show dev ib1 | grep -q tentative && break
	sleep 0.1
done
peer6=$(ip -n b -6 addr show dev ib1 scope link | awk '/inet6/ {sub("/.*", "", $2); print $2; exit}')
ip netns exec a ping -6 -c 3 -W 10 "$peer6%ib0"

echo "== 64 MiB over TCP, read back the same"
head -c $((64 << 20)) /dev/urandom > /tmp/blob
expected="$((64 << 20)) $(sha256sum < /tmp/blob | cut -d' ' -f1)"
ip netns exec b python3 /tilde/guest/tcp_blob.py recv 169.254.77.2 5001 > received.txt &
receiver=$!
for i in $(seq 300); do
	grep -q listening received.txt && break
	sleep 0.1
done
start=$(date +%s.%N)
ip netns exec a python3 /tilde/guest/tcp_blob.py send 169.254.77.2 5001 /tmp/blob
wait "$receiver"
end=$(date +%s.%N)
echo "64 MiB in $(echo "$end - $start" | bc) s (QEMU TCG)"
got=$(tail -n 1 received.txt)
echo "sent: $expected"
echo "got:  $got"
[ "$got" = "$expected" ] || { echo "FAIL: the data came back different"; exit 1; }
ip -n a -s link show ib0

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
