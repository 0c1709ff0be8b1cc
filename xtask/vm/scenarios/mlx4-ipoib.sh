# IPoIB over tilde_mlx4: the emulated ConnectX-3 bound by tilde's driver, not mlx4_ib.
# opensm activates both ports through tilde's QP0s; the kernel's own ib_ipoib brings up
# ib0 and ib1 over tilde_mlx4_0, each moved into a network namespace of its own, and they
# talk across the emulated cable: ARP and neighbour discovery through the broadcast and
# solicited-node groups (SA joins, then tilde_mlx4's multicast attach: the device finds
# each group by walking the hash chain the driver wrote), IPv4 and IPv6 ping, 64 MiB over
# TCP with the same SHA-256 at both ends. Then tilde_ipoib takes port 1 against
# ib_ipoib's port 2: Rust on Rust on the wire of a Rust device driver, ping and TCP both
# ways, UDP to a multicast group. Everything unloads with nothing left attached.
# needs-device: cx3
# needs-module: tilde_mlx4
# needs-module: tilde_ipoib
# timeout: 420
. /tilde/guest/lib.sh

insmod /tilde/drivers/tilde_mlx4.ko
ib_activate tilde_mlx4_0

# ns_pair IF_A IF_B NET: IF_A into namespace a as NET.1, IF_B into b as NET.2, both up
# with their carriers on (the broadcast group joined).
ns_pair() {
	local if_a=$1 if_b=$2 net=$3 i
	ip netns add a
	ip netns add b
	ip link set "$if_a" netns a
	ip link set "$if_b" netns b
	for ns in a b; do ip -n $ns link set lo up; done
	ip -n a addr add "$net.1/24" dev "$if_a"
	ip -n b addr add "$net.2/24" dev "$if_b"
	ip -n a link set "$if_a" up
	ip -n b link set "$if_b" up
	for i in $(seq 300); do
		ip -n a link show "$if_a" | grep -q LOWER_UP && ip -n b link show "$if_b" | grep -q LOWER_UP && break
		sleep 0.1
	done
	ip -n a link show "$if_a"
	ip -n b link show "$if_b"
	ip -n a link show "$if_a" | grep -q LOWER_UP || { echo "FAIL: $if_a's carrier is off"; return 1; }
	ip -n b link show "$if_b" | grep -q LOWER_UP || { echo "FAIL: $if_b's carrier is off"; return 1; }
}

# ping6_pair IF_A IF_B: IPv6 ping both ways between the link-local addresses, once
# duplicate address detection is done.
ping6_pair() {
	local if_a=$1 if_b=$2 i addr_a addr_b
	for i in $(seq 100); do
		ip -n a -6 addr show dev "$if_a" scope link | grep -q 'inet6 .*scope link' \
			&& ip -n b -6 addr show dev "$if_b" scope link | grep -q 'inet6 .*scope link' \
			&& ! ip -n a -6 addr show dev "$if_a" | grep -q tentative \
			&& ! ip -n b -6 addr show dev "$if_b" | grep -q tentative && break
		sleep 0.1
	done
	refute "$if_a's link-local address failed duplicate address detection" \
		grep -q dadfailed <(ip -n a -6 addr show dev "$if_a")
	addr_a=$(ip -n a -6 addr show dev "$if_a" scope link | awk '/inet6/ {sub("/.*", "", $2); print $2; exit}')
	addr_b=$(ip -n b -6 addr show dev "$if_b" scope link | awk '/inet6/ {sub("/.*", "", $2); print $2; exit}')
	ip netns exec a ping -6 -c 3 -W 10 "$addr_b%$if_a"
	ip netns exec b ping -6 -c 3 -W 10 "$addr_a%$if_b"
}

# tcp_transfer FROM_NS TO_NS TO_ADDR MIB: MIB MiB over TCP, read back with the same
# SHA-256.
tcp_transfer() {
	local from=$1 to=$2 addr=$3 mib=$4 receiver expected got i start end
	head -c $((mib << 20)) /dev/urandom > /tmp/blob
	expected="$((mib << 20)) $(sha256sum < /tmp/blob | cut -d' ' -f1)"
	rm -f received.txt
	ip netns exec "$to" python3 /tilde/guest/tcp_blob.py recv "$addr" 5001 > received.txt &
	receiver=$!
	for i in $(seq 300); do
		grep -q listening received.txt && break
		sleep 0.1
	done
	start=$(date +%s.%N)
	ip netns exec "$from" python3 /tilde/guest/tcp_blob.py send "$addr" 5001 /tmp/blob
	wait "$receiver"
	end=$(date +%s.%N)
	echo "$mib MiB $from → $to in $(echo "$end - $start" | bc) s (QEMU TCG)"
	got=$(tail -n 1 received.txt)
	echo "sent: $expected"
	echo "got:  $got"
	[ "$got" = "$expected" ] || { echo "FAIL: the data came back different"; return 1; }
}

echo "== the kernel's ib_ipoib over tilde_mlx4_0: one interface per port"
modprobe ib_ipoib
for i in $(seq 100); do
	[ -e /sys/class/net/ib0 ] && [ -e /sys/class/net/ib1 ] && break
	sleep 0.1
done
ns_pair ib0 ib1 169.254.77
# The broadcast group's MTU (2048 on this fabric) less the 4-byte header.
ip -n a link show ib0 | grep -q 'mtu 2044'

echo "== ping over IPv4 (ARP through the broadcast group, then UD unicast)"
ip netns exec a ping -c 3 -W 10 169.254.77.2
ip netns exec b ping -c 3 -W 10 169.254.77.1

echo "== ping over IPv6 (neighbour discovery through the solicited-node groups)"
ping6_pair ib0 ib1

echo "== 64 MiB over TCP, read back the same"
tcp_transfer a b 169.254.77.2 64
ip -n a -s link show ib0

echo "== ib_ipoib unloaded: every group detached, every object gone"
ip netns del a
ip netns del b
modprobe -r ib_ipoib
reject_dmesg 'tilde_mlx4: .*multicast'

echo "== tilde_ipoib on port 1 against ib_ipoib on port 2, both over tilde_mlx4_0"
modprobe ib_ipoib
for i in $(seq 100); do
	[ -e /sys/class/net/ib0 ] && [ -e /sys/class/net/ib1 ] && break
	sleep 0.1
done
kernel_if=
for d in ib0 ib1; do
	[ "$(cat /sys/class/net/$d/dev_port)" = 1 ] && kernel_if=$d
done
[ -n "$kernel_if" ] || { echo "FAIL: no ib_ipoib interface on port 2"; exit 1; }
insmod /tilde/ulps/tilde_ipoib.ko port=tilde_mlx4_0:1
wait_dmesg 'tilde_ipoib: tilde_mlx4_0/1: ib[0-9]+ \(QPN'
tilde_if=$(sed -n 's/.*tilde_ipoib: tilde_mlx4_0\/1: \(ib[0-9]*\) (QPN.*/\1/p' "$(kernel_log)" | tail -n 1)
echo "tilde_ipoib: $tilde_if, ib_ipoib on port 2: $kernel_if"
ns_pair "$tilde_if" "$kernel_if" 169.254.78
ip netns exec a ping -c 3 -W 10 169.254.78.2
ip netns exec b ping -c 3 -W 10 169.254.78.1
ping6_pair "$tilde_if" "$kernel_if"
tcp_transfer a b 169.254.78.2 32
tcp_transfer b a 169.254.78.1 32
for pair in "a 169.254.78.1 b 169.254.78.2" "b 169.254.78.2 a 169.254.78.1"; do
	# shellcheck disable=SC2086 # the pair is words
	set -- $pair
	rm -f mcast.txt
	ip netns exec "$3" python3 /tilde/guest/udp_mcast.py recv 239.1.2.3 "$4" 5002 20 > mcast.txt &
	receiver=$!
	for i in $(seq 300); do
		grep -q listening mcast.txt && break
		sleep 0.1
	done
	sleep 2
	ip netns exec "$1" python3 /tilde/guest/udp_mcast.py send 239.1.2.3 "$2" 5002 20
	wait "$receiver"
	got=$(tail -n 1 mcast.txt)
	echo "UDP multicast $1 → $3: $got of 20"
	[ "$got" = "received 20" ] || { echo "FAIL: multicast datagrams lost"; exit 1; }
done
ip -n a -s link show "$tilde_if"

echo "== unload: tilde_ipoib, ib_ipoib, then tilde_mlx4 with the MAD layer's objects only"
ip netns del a
ip netns del b
rmmod tilde_ipoib
expect_dmesg 'tilde_ipoib: tilde_mlx4_0/1: released'
modprobe -r ib_ipoib
reject_dmesg 'tilde_ipoib.*(leaking|failed)'
reject_dmesg 'tilde_mlx4: .*(failed|refused|multicast)'
ib_stop_sm
rmmod ib_umad
rmmod tilde_mlx4
expect_dmesg 'tilde_mlx4: [0-9a-f:.]+: HCA closed, every page given back$'
