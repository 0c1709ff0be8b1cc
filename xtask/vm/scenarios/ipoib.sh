# tilde_ipoib, tilde's IPoIB interface (datagram and connected mode), against the
# kernel's ib_ipoib over the emulated ConnectX-3: opensm activates both ports, tilde_ipoib makes the interface of
# port 1 (module parameter port=mlx4_0:1), the kernel's ib_ipoib the one of port 2, each
# moved into a network namespace of its own. tilde's interface must look like IPoIB to
# the stack (link/infiniband, the 20-byte address and the broadcast address, the MTU the
# broadcast group gives, `ethtool -i` naming the driver), join the broadcast group
# through the SA, and carry ARP, ICMP and TCP to ib_ipoib both ways (unicast through SA
# path queries and address handles), IPv4 and IPv6 (neighbour discovery through the
# solicited-node groups tilde_ipoib joins as the stack lists them), and 256 MiB over TCP
# each way with the same SHA-256 on both ends, UDP to a multicast group each way (a
# full-member join on the receiving side, a send-only join on the sending side); both
# switched to connected mode (`/sys/class/net/<if>/mode`: an RC connection each way
# through the IB CM, MTU 65520, 64 KiB pings, 256 MiB over TCP each way) and back; opensm
# restarted and traffic again; port 1 taken down under traffic (the carrier follows, the
# broadcast group is joined again when opensm makes the port ACTIVE, traffic resumes). Then
# rmmod under traffic both ways, with everything let go; loaded again, the device's
# removal (rmmod mlx4_ib) under the interface, up, takes it away.
# needs-device: cx3
# needs-module: tilde_ipoib
# timeout: 600
. /tilde/guest/lib.sh
. /tilde/guest/ipoib.sh

cx3_active

echo "== ib_ipoib: the kernel's interfaces (port 2's is the peer; port 1's stays down)"
ib_ipoib_up
kernel_if=$IB_IF2
echo "ib_ipoib on port 2: $kernel_if"

echo "== tilde_ipoib on port 1"
tilde_ipoib_up mlx4_0:1
tilde_if=$TILDE_IF
ip -d link show "$tilde_if"
ip -d link show "$tilde_if" | grep -q 'link/infiniband'
# The broadcast address of the default partition, and a 20-byte address whose GID is
# port 1's.
ip link show "$tilde_if" | grep -q 'brd 00:ff:ff:ff:ff:12:40:1b:ff:ff:00:00:00:00:00:00:ff:ff:ff:ff'
gid1=$(sed 's/://g' /sys/class/infiniband/mlx4_0/ports/1/gids/0)
addr=$(cat /sys/class/net/$tilde_if/address | sed 's/://g')
echo "address $addr, port 1's GID $gid1"
[ "${addr#????????}" = "$gid1" ] || { echo "FAIL: the address does not carry port 1's GID"; exit 1; }
# Its flags offer connected mode (RFC 4755 §4), as ib_ipoib's do.
[ "${addr:0:2}" = 80 ] || { echo "FAIL: the address does not offer connected mode"; exit 1; }
# What `ethtool -i` shows (the guest has no ethtool: the same ioctl from Python).
python3 /tilde/guest/drvinfo.py "$tilde_if" | tee drvinfo.txt
grep -q '^driver: tilde_ipoib$' drvinfo.txt

ns_pair "$tilde_if" "$kernel_if" 169.254.78
# The broadcast group's MTU (2048 on this fabric) less the 4-byte header.
ip -n a link show "$tilde_if" | grep -q 'mtu 2044'

echo "== ping over IPv4, tilde_ipoib → ib_ipoib (ARP through the broadcast group, then UD unicast)"
ip netns exec a ping -c 3 -W 10 169.254.78.2
echo "== ping over IPv4, ib_ipoib → tilde_ipoib"
ip netns exec b ping -c 3 -W 10 169.254.78.1
ip -n a neigh show
ip -n b neigh show

echo "== the administrator's MTU: taken below the broadcast group's, capped at it above"
ip -n a link set "$tilde_if" mtu 1500
ip -n a link show "$tilde_if" | grep -q 'mtu 1500'
ip netns exec a ping -c 2 -W 10 -s 1472 -M do 169.254.78.2
ip -n a link set "$tilde_if" mtu 4000
ip -n a link show "$tilde_if"
ip -n a link show "$tilde_if" | grep -q 'mtu 2044'
ip netns exec a ping -c 2 -W 10 -s 2016 -M do 169.254.78.2

echo "== ping over IPv6 both ways (neighbour discovery through the solicited-node groups)"
ping6_pair "$tilde_if" "$kernel_if"

echo "== 256 MiB over TCP, tilde_ipoib → ib_ipoib"
tcp_transfer a b 169.254.78.2 256
echo "== 256 MiB over TCP, ib_ipoib → tilde_ipoib"
tcp_transfer b a 169.254.78.1 256

echo "== UDP to a multicast group, tilde_ipoib → ib_ipoib"
udp_multicast a 169.254.78.1 b 169.254.78.2
echo "== UDP to a multicast group, ib_ipoib → tilde_ipoib"
udp_multicast b 169.254.78.2 a 169.254.78.1

echo "== connected mode (RFC 4755) on both sides: an RC connection each way through the IB CM"
ip netns exec a cat "/sys/class/net/$tilde_if/mode" | grep -qx datagram
connected_mode a "$tilde_if" b "$kernel_if"
echo "== ping both ways over the connections, IPv4 and IPv6"
ip netns exec a ping -c 3 -W 10 169.254.78.2
ip netns exec b ping -c 3 -W 10 169.254.78.1
ping6_pair "$tilde_if" "$kernel_if"
echo "== 64 KiB pings: more than UD carries, one IPoIB message each"
ip netns exec a ping -c 2 -W 10 -s 65000 -M do 169.254.78.2
ip netns exec b ping -c 2 -W 10 -s 65000 -M do 169.254.78.1
echo "== 256 MiB over TCP, tilde_ipoib → ib_ipoib, connected"
tcp_transfer a b 169.254.78.2 256
echo "== 256 MiB over TCP, ib_ipoib → tilde_ipoib, connected"
tcp_transfer b a 169.254.78.1 256
# Our connection to ib_ipoib; ib_ipoib's to us went through tilde_ipoib's listener (its
# packets above came over it: ib_ipoib sends unicast over UD to no connected-mode peer).
expect_dmesg 'tilde_ipoib: mlx4_0/1: connected to QPN'
rdma res show qp link mlx4_0/1 | tee qps.log
[ "$(grep -c 'type RC state RTS .*comm \[tilde_rdma\]' qps.log)" = 2 ] ||
	{ echo "FAIL: tilde_ipoib does not have its two RC QPs (ours and the peer's connection) in RTS"; exit 1; }
echo "== back to datagram mode: the connections torn down, the group's MTU again"
datagram_mode a "$tilde_if" b "$kernel_if"
ip netns exec a ping -c 3 -W 10 169.254.78.2
ip netns exec b ping -c 3 -W 10 169.254.78.1

# Under mlx4_ib the emulated device reports no client reregistration (nor does it to
# ib_ipoib): the SM's restart only shows that nothing is lost across it; the rejoin it
# causes is checked over tilde_mlx4 (mlx4-ipoib), which reports it.
echo "== opensm restarted: traffic resumes"
opensm_restart mlx4_0
ip -n a neigh flush dev "$tilde_if"
ip -n b neigh flush dev "$kernel_if"
ip netns exec a ping -c 3 -W 10 169.254.78.2
ip netns exec b ping -c 3 -W 10 169.254.78.1
udp_multicast a 169.254.78.1 b 169.254.78.2

echo "== port 1 taken down under traffic: tilde_ipoib's carrier follows, it rejoins, traffic resumes"
port_flap mlx4_0 1 a "$tilde_if" b 169.254.78.2 169.254.78.1

echo "== statistics"
ip -n a -s link show "$tilde_if"

echo "== rmmod tilde_ipoib under traffic both ways"
ip netns exec a ping -q -i 0.002 169.254.78.2 > /dev/null 2>&1 &
pinger_a=$!
ip netns exec b ping -q -i 0.002 169.254.78.1 > /dev/null 2>&1 &
pinger_b=$!
sleep 2
still_running "$pinger_a" "rmmod"
still_running "$pinger_b" "rmmod"
rmmod tilde_ipoib
expect_dmesg 'tilde_ipoib: unloading'
# The port's state was freed: nothing (a work request, an SA request, a membership)
# kept a reference.
expect_dmesg 'tilde_ipoib: mlx4_0/1: released'
refute "tilde_ipoib's interface is still there" ip -n a link show "$tilde_if"
kill "$pinger_a" "$pinger_b" 2>/dev/null || true
wait "$pinger_a" "$pinger_b" 2>/dev/null || true
reject_dmesg 'tilde_ipoib.*(leaking|failed)'
# An object the IB core refused to destroy (a QP still attached to a group).
reject_dmesg 'tilde_rdma: .*leaking'
ip netns del a
ip netns del b

echo "== the device removed under tilde_ipoib: its interface goes with it, in use"
echo "   (loaded with connected_mode=0: datagram mode only, and an address that says so)"
insmod /tilde/ulps/tilde_ipoib.ko port=mlx4_0:1 connected_mode=0
for i in $(seq 100); do
	[ "$(count_dmesg 'tilde_ipoib: mlx4_0/1: ib[0-9]+ \(QPN')" = 2 ] && break
	sleep 0.1
done
tilde_if=$(sed -n 's/.*tilde_ipoib: mlx4_0\/1: \(ib[0-9]*\) (QPN.*/\1/p' "$(kernel_log)" | tail -n 1)
ipoib_addr_up "$tilde_if" 169.254.78.1
case "$(cat "/sys/class/net/$tilde_if/address")" in
00:*) ;;
*) echo "FAIL: the address offers connected mode with connected_mode=0"; exit 1 ;;
esac
refute "tilde_ipoib took connected mode without offering it" \
	sh -c "echo connected > /sys/class/net/$tilde_if/mode 2>/dev/null"
rmmod ib_ipoib
rmmod mlx4_ib
[ "$(count_dmesg 'tilde_ipoib: mlx4_0/1: released')" = 2 ] || { echo "FAIL: the port's state was not released on device removal"; exit 1; }
refute "tilde_ipoib's interface outlived its device" ip link show "$tilde_if"
rmmod tilde_ipoib
reject_dmesg 'tilde_ipoib.*(leaking|failed)'
rmmod mlx4_core
reject_dmesg "mlx4_core.*(failed|error|timeout|Error)"
