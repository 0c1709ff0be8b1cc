# The target kernel itself, without tilde: it is the release built or installed for the
# target, and soft-RoCE works on it (RC traffic with the rdma-core tools, RDMA CM).
# The baseline for a new target: it runs before tilde's modules build there.
# no-modules
. /tilde/guest/lib.sh

echo "== the target's kernel"
release=$(cat /tilde/kernel-release)
[ "$(uname -r)" = "$release" ]
expect_dmesg "Linux version ${release//[.+]/.} "
if grep -q '^tilde' /proc/modules; then
	echo "FAIL: a tilde module is loaded"
	exit 1
fi

echo "== rxe0 over virtio-net"
rdma link show rxe0/1 | grep -q 'state ACTIVE'

echo "== RC traffic (ibv_rc_pingpong)"
ibv_rc_pingpong -d rxe0 -g 1 -n 200 > server.log 2>&1 &
server=$!
wait_listening 18515
ibv_rc_pingpong -d rxe0 -g 1 -n 200 127.0.0.1 | tee client.log
wait "$server"
grep -q '200 iters in' client.log

echo "== RDMA CM (rping)"
rping_verified 10.0.2.15

echo "== rdma link delete rxe0"
rdma link delete rxe0
