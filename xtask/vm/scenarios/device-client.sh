# tilde_core's device client over rxe, on the stock kernel.
# stage2 loaded tilde_core, then ran `rdma link add rxe0 type rxe netdev eth0`.
. /tilde/guest/lib.sh

echo "== tilde_core built for, and loaded into, the stock kernel"
release=$(cat /tilde/kernel-release)
[ "$(uname -r)" = "$release" ]
expect_dmesg "Linux version ${release//[.+]/.} "
[ "$(modinfo -F vermagic /tilde/modules/00-tilde_core.ko | cut -d' ' -f1)" = "$release" ]
grep '^tilde_core ' /proc/modules

echo "== rxe0 added while tilde_core is loaded"
expect_dmesg 'tilde_core: loaded: device client registered'
expect_dmesg 'tilde_core: rxe0: added: node_guid [0-9a-f]{4}(:[0-9a-f]{4}){3} ports 1$'
expect_dmesg 'tilde_core: rxe0: port 1: link_layer Ethernet state (ACTIVE|DOWN)'

echo "== RC traffic over rxe0 with tilde_core loaded"
ibv_rc_pingpong -d rxe0 -g 1 -n 1000 -c > server.log 2>&1 &
server=$!
wait_listening 18515
ibv_rc_pingpong -d rxe0 -g 1 -n 1000 -c 127.0.0.1 | tee client.log
wait "$server"
cat server.log
grep -q '1000 iters in' client.log

echo "== rdma link delete rxe0"
rdma link delete rxe0
expect_dmesg 'tilde_core: rxe0: removed$'

echo "== unload with no device"
rmmod tilde_core
expect_dmesg 'tilde_core: unloading: unregistering device client'

echo "== load with rxe0 present, then unload: add and remove through registration"
rdma link add rxe0 type rxe netdev eth0
insmod /tilde/modules/00-tilde_core.ko
[ "$(count_dmesg 'tilde_core: rxe0: added')" = 2 ]
rmmod tilde_core
[ "$(count_dmesg 'tilde_core: rxe0: removed')" = 2 ]
rdma link delete rxe0
# No tilde client is left: a new device is not reported.
rdma link add rxe1 type rxe netdev eth0
reject_dmesg 'tilde_core: rxe1'
rdma link delete rxe1
echo "device-client: all checks passed"
