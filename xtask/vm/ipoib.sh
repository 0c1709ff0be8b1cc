# IPoIB helpers for scenarios (sourced after lib.sh): two interfaces in two network
# namespaces (a and b), and the traffic checks every IPoIB pair must pass.

# ib_ipoib_up: the kernel's ib_ipoib loaded and its interfaces of both ports there: port
# 1's in IB_IF1, port 2's in IB_IF2 (`dev_port` counts from 0).
ib_ipoib_up() {
	local i d
	modprobe ib_ipoib
	for i in $(seq 100); do
		[ -e /sys/class/net/ib0 ] && [ -e /sys/class/net/ib1 ] && break
		sleep 0.1
	done
	IB_IF1= IB_IF2=
	for d in ib0 ib1; do
		case "$(cat "/sys/class/net/$d/dev_port" 2>/dev/null)" in
		0) IB_IF1=$d ;;
		1) IB_IF2=$d ;;
		esac
	done
	[ -n "$IB_IF1" ] && [ -n "$IB_IF2" ] ||
		{ echo "FAIL: ib_ipoib did not make an interface for each port"; return 1; }
}

# tilde_ipoib_up DEV:PORT [PARAMETER...]: tilde_ipoib loaded for DEV's PORT (and the
# other parameters given), its interface in TILDE_IF.
tilde_ipoib_up() {
	local dev=${1%:*} port=${1#*:}
	insmod /tilde/ulps/tilde_ipoib.ko port="$1" "${@:2}"
	wait_dmesg "tilde_ipoib: $dev/$port: ib[0-9]+ \(QPN"
	TILDE_IF=$(sed -n "s/.*tilde_ipoib: $dev\/$port: \(ib[0-9]*\) (QPN.*/\1/p" "$(kernel_log)" | tail -n 1)
	echo "tilde_ipoib on $dev/$port: $TILDE_IF"
}

# ipoib_addr_up IF ADDR: IF up with ADDR/24 here, its carrier on (the broadcast group
# joined).
ipoib_addr_up() {
	local i
	ip addr add "$2/24" dev "$1"
	ip link set "$1" up
	for i in $(seq 300); do
		ip link show "$1" | grep -q LOWER_UP && break
		sleep 0.1
	done
	ip link show "$1"
	ip link show "$1" | grep -q LOWER_UP ||
		{ echo "FAIL: $1's carrier is off (broadcast group not joined)"; return 1; }
}

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
	ip -n a -6 addr show dev "$if_a"
	ip -n b -6 addr show dev "$if_b"
	refute "$if_a's link-local address failed duplicate address detection" \
		grep -q dadfailed <(ip -n a -6 addr show dev "$if_a")
	addr_a=$(ip -n a -6 addr show dev "$if_a" scope link | awk '/inet6/ {sub("/.*", "", $2); print $2; exit}')
	addr_b=$(ip -n b -6 addr show dev "$if_b" scope link | awk '/inet6/ {sub("/.*", "", $2); print $2; exit}')
	ip netns exec a ping -6 -c 3 -W 10 "$addr_b%$if_a"
	ip netns exec b ping -6 -c 3 -W 10 "$addr_a%$if_b"
}

# tcp_transfer FROM_NS TO_NS TO_ADDR MIB: MIB MiB over TCP, read back with the same
# SHA-256; the seconds it took in TCP_SECONDS.
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
	TCP_SECONDS=$(echo "$end - $start" | bc)
	echo "$mib MiB $from → $to in $TCP_SECONDS s (QEMU TCG)"
	got=$(tail -n 1 received.txt)
	echo "sent: $expected"
	echo "got:  $got"
	[ "$got" = "$expected" ] || { echo "FAIL: the data came back different"; return 1; }
}

# pair_traffic NET IF_A IF_B MIB: what a pair of IPoIB interfaces in namespaces a (NET.1)
# and b (NET.2) must carry: IPv4 ping both ways (ARP through the broadcast group, then UD
# unicast), IPv6 ping both ways (neighbour discovery through the solicited-node groups),
# MIB MiB over TCP from a to b, read back the same.
pair_traffic() {
	local net=$1 if_a=$2 if_b=$3 mib=$4
	echo "== ping over IPv4 (ARP through the broadcast group, then UD unicast)"
	ip netns exec a ping -c 3 -W 10 "$net.2"
	ip netns exec b ping -c 3 -W 10 "$net.1"
	echo "== ping over IPv6 (neighbour discovery through the solicited-node groups)"
	ping6_pair "$if_a" "$if_b"
	echo "== $mib MiB over TCP, read back the same"
	tcp_transfer a b "$net.2" "$mib"
	ip -n a -s link show "$if_a"
}

# udp_multicast FROM_NS FROM_ADDR TO_NS TO_ADDR: 20 datagrams to 239.1.2.3, which the
# receiver joins (a full-member SA join and a QP attach on its side) and the sender does
# not (a send-only join on its side), all received.
udp_multicast() {
	local from=$1 from_addr=$2 to=$3 to_addr=$4 receiver got i
	rm -f mcast.txt
	ip netns exec "$to" python3 /tilde/guest/udp_mcast.py recv 239.1.2.3 "$to_addr" 5002 20 > mcast.txt &
	receiver=$!
	for i in $(seq 300); do
		grep -q listening mcast.txt && break
		sleep 0.1
	done
	# The receiver's join goes through the SA before the first datagram.
	sleep 2
	ip netns exec "$from" python3 /tilde/guest/udp_mcast.py send 239.1.2.3 "$from_addr" 5002 20
	wait "$receiver"
	got=$(tail -n 1 mcast.txt)
	echo "$from → $to: $got of 20"
	[ "$got" = "received 20" ] || { echo "FAIL: multicast datagrams lost"; return 1; }
}

# port_flap DEV PORT NS IF PEER_NS PEER_ADDR ADDR: DEV's PORT taken down under ping traffic
# from PEER_NS to ADDR (a PortInfo Set of PortState Down through the port's own SMA, as
# `ibportstate ... down` sends it): IF in NS loses its carrier, opensm makes the port
# ACTIVE again (at once, or at its next sweep), IF rejoins the broadcast group and gets
# its carrier back, and ping and UDP multicast go through again both ways. The carrier
# may be back within a poll's interval, so its changes are counted, not watched.
port_flap() {
	local dev=$1 port=$2 ns=$3 if=$4 peer_ns=$5 peer_addr=$6 addr=$7 i pinger before changes
	changes() { ip netns exec "$ns" cat "/sys/class/net/$if/carrier_changes"; }
	ip netns exec "$peer_ns" ping -q -i 0.05 "$addr" > /dev/null 2>&1 &
	pinger=$!
	sleep 1
	before=$(changes)
	ibportstate -C "$dev" -P "$port" -D 0 "$port" down > ibportstate.log
	# opensm sweeps every 10 s.
	for i in $(seq 400); do
		[ "$(changes)" -ge $((before + 2)) ] &&
			rdma link show "$dev/$port" | grep -q 'state ACTIVE' &&
			ip -n "$ns" link show "$if" | grep -q LOWER_UP && break
		sleep 0.1
	done
	rdma link show "$dev/$port"
	ip -n "$ns" link show "$if"
	echo "$if: carrier changes $before -> $(changes)"
	[ "$(changes)" -ge $((before + 2)) ] ||
		{ echo "FAIL: $if's carrier did not go down and up with port $port"; return 1; }
	ip -n "$ns" link show "$if" | grep -q LOWER_UP ||
		{ echo "FAIL: $if did not get its carrier back"; return 1; }
	still_running "$pinger" "the port came back"
	kill "$pinger"
	wait "$pinger" 2>/dev/null || true
	ip netns exec "$ns" ping -c 3 -W 10 "$peer_addr"
	ip netns exec "$peer_ns" ping -c 3 -W 10 "$addr"
	udp_multicast "$ns" "$addr" "$peer_ns" "$peer_addr"
	udp_multicast "$peer_ns" "$peer_addr" "$ns" "$addr"
}


# connected_mode NS_A IF_A NS_B IF_B: both interfaces switched to connected mode through
# /sys/class/net/<if>/mode, as ib_ipoib's: the mode reads back, the MTU is 65520.
connected_mode() {
	set_mode "$1" "$2" connected 65520
	set_mode "$3" "$4" connected 65520
}

# datagram_mode NS_A IF_A NS_B IF_B: both back to datagram mode, the broadcast group's
# MTU (2044 on this fabric).
datagram_mode() {
	set_mode "$1" "$2" datagram 2044
	set_mode "$3" "$4" datagram 2044
}

# set_mode NS IF MODE MTU: IF in NS switched to MODE, which reads back, with MTU.
set_mode() {
	local ns=$1 if=$2 mode=$3 mtu=$4
	ip netns exec "$ns" sh -c "echo $mode > /sys/class/net/$if/mode"
	ip netns exec "$ns" cat "/sys/class/net/$if/mode" | grep -qx "$mode" ||
		{ echo "FAIL: $if's mode does not read back as $mode"; return 1; }
	ip -n "$ns" link show "$if"
	ip -n "$ns" link show "$if" | grep -q "mtu $mtu " ||
		{ echo "FAIL: $if's MTU in $mode mode is not $mtu"; return 1; }
}

# opensm_restart DEV: opensm killed and started again on DEV's port 1. Its first sweep
# sets PortInfo:ClientReregister on every port, which tilde_mlx4 sees in the SMP (as
# mlx4_ib's smp_snoop does) and reports as IB_EVENT_CLIENT_REREGISTER; the emulated
# device's own SMA, under mlx4_ib, reports none. Returns once both ports are ACTIVE
# (they stay so while no SM runs): the sweep may still be under way.
opensm_restart() {
	ib_stop_sm
	ib_activate "$1"
}
