# The kernel's own iSER, end to end, as the reference tilde's iSER initiator will be held
# to: the LIO target with an iSER portal on rxe0's address and a 256 MiB RAM LUN,
# open-iscsi logging in over the `iser` transport (ib_iser), a pattern written over the
# whole LUN and read back identical, logout, unload, dmesg clean.
# no-modules
. /tilde/guest/lib.sh

target=iqn.2026-11.org.tilde:ram0
addr=10.0.2.15

echo "== LIO target: RAM LUN, iSER portal on $addr:3260"
modprobe target_core_mod
modprobe iscsi_target_mod
modprobe ib_isert
mount -t configfs configfs /sys/kernel/config 2>/dev/null || true
# LIO through configfs itself (targetcli wants a D-Bus the guest does not run).
cfg=/sys/kernel/config/target
mkdir -p "$cfg/core/rd_mcp_0/ram0"
echo rd_pages=65536 > "$cfg/core/rd_mcp_0/ram0/control"
echo 1 > "$cfg/core/rd_mcp_0/ram0/enable"
tpg="$cfg/iscsi/$target/tpgt_1"
mkdir -p "$tpg/lun/lun_0"
ln -s "$cfg/core/rd_mcp_0/ram0" "$tpg/lun/lun_0/ram0"
mkdir "$tpg/np/$addr:3260"
echo 1 > "$tpg/np/$addr:3260/iser"
echo 0 > "$tpg/attrib/authentication"
echo 1 > "$tpg/attrib/generate_node_acls"
echo 1 > "$tpg/attrib/cache_dynamic_acls"
echo 0 > "$tpg/attrib/demo_mode_write_protect"
echo 1 > "$tpg/enable"

echo "== open-iscsi over iser"
modprobe ib_iser
# No udev to load the disk driver when the LUN appears.
modprobe sd_mod
mkdir -p /etc/iscsi /run/lock/iscsi /var/lib/iscsi
echo "InitiatorName=iqn.2026-11.org.tilde:vm" > /etc/iscsi/initiatorname.iscsi
iscsid
sleep 1
# `iser` is open-iscsi's built-in iface for the iser transport.
iscsiadm -m discovery -t st -p "$addr" -I iser | tee discovery.log
grep -q "$target" discovery.log
iscsiadm -m node -T "$target" -p "$addr" -I iser --login
# No udev in the guest: the session names its disk, and devtmpfs has the node.
disk=""
for _ in $(seq 1 50); do
	disk=$(iscsiadm -m session -P 3 | awk '/Attached scsi disk/ {print $4; exit}')
	[ -n "$disk" ] && [ -b "/dev/$disk" ] && break
	sleep 0.2
done
[ -n "$disk" ] || { echo "FAIL: no disk appeared"; iscsiadm -m session -P 3 || true; exit 1; }
dev=/dev/$disk
echo "disk: $dev ($(cat /sys/block/$disk/size) sectors)"
[ "$(cat /sys/block/$disk/size)" = 524288 ]

echo "== a pattern over the whole LUN, read back"
head -c 268435456 /dev/urandom > /tmp/pattern
dd if=/tmp/pattern of="$dev" bs=1M oflag=direct status=none
written=$(sha256sum < /tmp/pattern | cut -d' ' -f1)
read=$(dd if="$dev" bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1)
echo "written $written, read $read"
[ "$written" = "$read" ]

echo "== logout, unload"
iscsiadm -m node -T "$target" -p "$addr" -I iser --logout
pkill iscsid || true
echo 0 > "$tpg/enable"
rm "$tpg/lun/lun_0/ram0"
rmdir "$tpg/lun/lun_0" "$tpg/np/$addr:3260" "$tpg" "$cfg/iscsi/$target"
rmdir "$cfg/core/rd_mcp_0/ram0" "$cfg/core/rd_mcp_0"
rmmod ib_iser
