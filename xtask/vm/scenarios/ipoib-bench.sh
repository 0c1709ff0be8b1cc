# tilde_ipoib against the kernel's ib_ipoib, in the same boot over the emulated
# ConnectX-3: port 1 carries both the kernel's interface (namespace k) and tilde's
# (namespace t), each its own UD QP in the broadcast group; the kernel's interface of
# port 2 (namespace b) is the peer of both. In datagram mode, then in connected mode (all
# three interfaces switched), five rounds, each taking turns (ib_ipoib, then tilde): 32
# MiB over TCP each way, and 100 pings 10 ms apart. Each round gives one
# tilde/ib_ipoib time ratio per measure (below 1 is faster); the table gives their
# median and their spread (lowest, highest), which is what the machine's noise leaves.
# A benchmark, not a test: `cargo xtask vm ipoib-bench`; numbers in the scenario log.
# benchmark
# needs-device: cx3
# needs-module: tilde_ipoib
# timeout: 1200
. /tilde/guest/lib.sh
. /tilde/guest/ipoib.sh

cx3_active
ib_ipoib_up
tilde_ipoib_up mlx4_0:1
kernel1=$IB_IF1 kernel2=$IB_IF2 tilde1=$TILDE_IF
echo "port 1: ib_ipoib $kernel1, tilde_ipoib $tilde1; port 2: ib_ipoib $kernel2"

for ns in k t b; do
	ip netns add $ns
	ip -n $ns link set lo up
done
ip link set "$kernel1" netns k
ip link set "$tilde1" netns t
ip link set "$kernel2" netns b
ip -n k addr add 169.254.79.1/24 dev "$kernel1"
ip -n t addr add 169.254.79.3/24 dev "$tilde1"
ip -n b addr add 169.254.79.2/24 dev "$kernel2"
ip -n k link set "$kernel1" up
ip -n t link set "$tilde1" up
ip -n b link set "$kernel2" up
for i in $(seq 300); do
	ip -n k link show "$kernel1" | grep -q LOWER_UP && ip -n t link show "$tilde1" | grep -q LOWER_UP \
		&& ip -n b link show "$kernel2" | grep -q LOWER_UP && break
	sleep 0.1
done
ip netns exec k ping -c 2 -W 10 169.254.79.2 > /dev/null
ip netns exec t ping -c 2 -W 10 169.254.79.2 > /dev/null

# latency FROM ADDR: the mean round trip in ms of 100 pings.
latency() {
	ip netns exec "$1" ping -q -c 100 -i 0.01 -W 10 "$2" | awk -F/ '/^rtt/ {print $5}'
}

: > results.txt
for mode in datagram connected; do
	mtu=2044
	[ $mode = connected ] && mtu=65520
	set_mode k "$kernel1" $mode $mtu > /dev/null
	set_mode t "$tilde1" $mode $mtu > /dev/null
	set_mode b "$kernel2" $mode $mtu > /dev/null
	ip netns exec k ping -c 2 -W 10 169.254.79.2 > /dev/null
	ip netns exec t ping -c 2 -W 10 169.254.79.2 > /dev/null
	for round in 1 2 3 4 5; do
		for impl in ib_ipoib tilde; do
			case $impl in
			ib_ipoib) ns=k addr=169.254.79.1 ;;
			tilde) ns=t addr=169.254.79.3 ;;
			esac
			tcp_transfer "$ns" b 169.254.79.2 32 > transfer.log
			send=$TCP_SECONDS
			tcp_transfer b "$ns" "$addr" 32 > transfer.log
			recv=$TCP_SECONDS
			rtt=$(latency "$ns" 169.254.79.2)
			echo "$mode round $round $impl: 32 MiB out ${send} s, in ${recv} s, ping ${rtt} ms"
			echo "$mode $round $impl $send $recv $rtt" >> results.txt
		done
	done
done

echo "== tilde/ib_ipoib per round (time ratios; QEMU TCG, the emulated ConnectX-3)"
python3 - results.txt <<'PY'
import statistics, sys
rounds = {}
for line in open(sys.argv[1]):
    mode, r, impl, out, inn, rtt = line.split()
    rounds.setdefault(mode, {}).setdefault(r, {})[impl] = (float(out), float(inn), float(rtt))
names = ("TCP out", "TCP in", "ping")
for mode, per_round in rounds.items():
    ratios = [[] for _ in names]
    for r, m in sorted(per_round.items()):
        for i in range(3):
            ratios[i].append(m["tilde"][i] / m["ib_ipoib"][i])
    print("%s mode" % mode)
    print("%-8s %8s  %s" % ("measure", "median", "spread (lowest-highest) over %d rounds" % len(per_round)))
    for name, rs in zip(names, ratios):
        print("%-8s %8.2f  %.2f-%.2f" % (name, statistics.median(rs), min(rs), max(rs)))
PY

rmmod tilde_ipoib
for ns in k t b; do ip netns del $ns; done
rmmod ib_ipoib
rmmod mlx4_ib mlx4_core
