# tilde_mlx4's InfiniBand device under a subnet manager: opensm, over ib_umad on
# tilde_mlx4_0's port 1, sweeps the fabric through tilde_mlx4's QP0s (directed-route
# SMPs, in MLX WQEs the driver writes, across the emulated cable to port 2, answered by
# the SMA through process_mad and MAD_IFC), gives both ports their LIDs and makes them
# ACTIVE; the port events reach the IB core. Then the management tools of rdma-core
# (infiniband-diags) talk to the ports by LID: SMPs over QP0, PMA queries, SA queries to
# opensm over QP1.
# needs-device: cx3
# needs-module: tilde_mlx4
. /tilde/guest/lib.sh

echo "== tilde_mlx4 binds the emulated ConnectX-3 and registers tilde_mlx4_0"
insmod /tilde/drivers/tilde_mlx4.ko
ib_activate tilde_mlx4_0

echo "== the ports' LIDs, and the port events the IB core's clients saw"
for p in 1 2; do
	lid=$(cat /sys/class/infiniband/tilde_mlx4_0/ports/$p/lid)
	sm=$(cat /sys/class/infiniband/tilde_mlx4_0/ports/$p/sm_lid)
	echo "port $p: LID $lid, SM LID $sm"
	[ "$((lid))" != 0 ] || { echo "FAIL: port $p has no LID"; exit 1; }
done
lid1=$(( $(cat /sys/class/infiniband/tilde_mlx4_0/ports/1/lid) ))
lid2=$(( $(cat /sys/class/infiniband/tilde_mlx4_0/ports/2/lid) ))
[ "$(( $(cat /sys/class/infiniband/tilde_mlx4_0/ports/2/sm_lid) ))" = "$lid1" ] ||
	{ echo "FAIL: port 2 does not know port 1's opensm as its SM"; exit 1; }
expect_dmesg 'tilde_core: tilde_mlx4_0: port 1: event: port active'
expect_dmesg 'tilde_core: tilde_mlx4_0: port 2: event: port active'
expect_dmesg 'tilde_core: tilde_mlx4_0: port 1: event: LID change$'

echo "== infiniband-diags by LID: SMPs, PMA, SA"
ibstat tilde_mlx4_0 | tee ibstat.log
grep -q 'State: Active' ibstat.log
smpquery -C tilde_mlx4_0 -P 1 nodeinfo "$lid2" | tee nodeinfo.log
grep -q "^Guid:\.*0x0002c90300a0b0c0" nodeinfo.log
smpquery -C tilde_mlx4_0 -P 1 portinfo "$lid2" 2 | tee portinfo.log
grep -q "LinkState:.*Active" portinfo.log
perfquery -C tilde_mlx4_0 -P 1 "$lid2" 2 | tee perf.log
grep -q "PortXmitPkts" perf.log
saquery -C tilde_mlx4_0 -P 1 NR | tee nr.log
grep -q "lid.*$lid1" nr.log
grep -q "lid.*$lid2" nr.log

echo "== unload: opensm's ports go, the device and the HCA with them"
ib_stop_sm
rmmod ib_umad
rmmod tilde_mlx4
expect_dmesg 'tilde_mlx4: [0-9a-f:.]+: HCA closed, every page given back$'
reject_dmesg 'tilde_mlx4: .*(failed|refused|outside the BAR|left with the device)'
