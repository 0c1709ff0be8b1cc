# iSER helpers for scenarios (sourced after lib.sh): the LIO target with an iSER portal on
# rxe0's address and a 256 MiB RAM LUN, open-iscsi over the `iser` transport, and the data
# checks every iSER initiator (the kernel's ib_iser, tilde's tilde_iser) must pass.

ISER_TARGET=iqn.2026-11.org.tilde:ram0
ISER_ADDR=10.0.2.15
ISER_LUN_SECTORS=524288

# iser_target_up: LIO through configfs itself (targetcli wants a D-Bus the guest does not run).
iser_target_up() {
	echo "== LIO target: RAM LUN, iSER portal on $ISER_ADDR:3260"
	modprobe target_core_mod
	modprobe iscsi_target_mod
	modprobe ib_isert
	mount -t configfs configfs /sys/kernel/config 2>/dev/null || true
	ISER_CFG=/sys/kernel/config/target
	ISER_TPG="$ISER_CFG/iscsi/$ISER_TARGET/tpgt_1"
	mkdir -p "$ISER_CFG/core/rd_mcp_0/ram0"
	echo rd_pages=65536 > "$ISER_CFG/core/rd_mcp_0/ram0/control"
	echo 1 > "$ISER_CFG/core/rd_mcp_0/ram0/enable"
	mkdir -p "$ISER_TPG/lun/lun_0"
	ln -s "$ISER_CFG/core/rd_mcp_0/ram0" "$ISER_TPG/lun/lun_0/ram0"
	mkdir "$ISER_TPG/np/$ISER_ADDR:3260"
	echo 1 > "$ISER_TPG/np/$ISER_ADDR:3260/iser"
	echo 0 > "$ISER_TPG/attrib/authentication"
	echo 1 > "$ISER_TPG/attrib/generate_node_acls"
	echo 1 > "$ISER_TPG/attrib/cache_dynamic_acls"
	echo 0 > "$ISER_TPG/attrib/demo_mode_write_protect"
	echo 1 > "$ISER_TPG/enable"
}

iser_target_down() {
	echo 0 > "$ISER_TPG/enable"
	rm "$ISER_TPG/lun/lun_0/ram0"
	rmdir "$ISER_TPG/lun/lun_0" "$ISER_TPG/np/$ISER_ADDR:3260" "$ISER_TPG" "$ISER_CFG/iscsi/$ISER_TARGET"
	rmdir "$ISER_CFG/core/rd_mcp_0/ram0" "$ISER_CFG/core/rd_mcp_0"
}

# iser_iscsid: open-iscsi's daemon, with the guest's initiator name.
iser_iscsid() {
	# No udev to load the disk driver when the LUN appears.
	modprobe sd_mod
	mkdir -p /etc/iscsi /run/lock/iscsi /var/lib/iscsi
	echo "InitiatorName=iqn.2026-11.org.tilde:vm" > /etc/iscsi/initiatorname.iscsi
	iscsid
	sleep 1
}

# iser_login: login over `iser` (open-iscsi's built-in iface for the iser transport,
# whichever module registered it); sets ISER_DEV to the disk.
iser_login() {
	echo "== open-iscsi over iser: login"
	# The node record is made directly, without SendTargets discovery: discovery over
	# iser lost its reply about once in ten scenario runs, in open-iscsi's own code
	# (iscsiadm sets aside a reply that beats the kernel's acknowledgement of SEND_PDU in
	# `__kipc_call` and never polls for it, times out after 30 s, and its reconnect then
	# segfaults, leaving a kernel session no process owns; ib_iser is exposed the same
	# way), and discovery over TCP needs iscsi_tcp, which the 6.12 target does not
	# build. The login and every PDU after it go over iser, through iscsid.
	iscsiadm -m node -o new -T "$ISER_TARGET" -p "$ISER_ADDR:3260" -I iser > /dev/null
	iscsiadm -m node -T "$ISER_TARGET" -p "$ISER_ADDR" -I iser --login
	# No udev in the guest: the session names its disk, and devtmpfs has the node.
	local disk=""
	for _ in $(seq 1 50); do
		disk=$(iscsiadm -m session -P 3 | awk '/Attached scsi disk/ {print $4; exit}')
		[ -n "$disk" ] && [ -b "/dev/$disk" ] && break
		sleep 0.2
	done
	[ -n "$disk" ] || { echo "FAIL: no disk appeared"; iscsiadm -m session -P 3 || true; return 1; }
	ISER_DEV=/dev/$disk
	echo "disk: $ISER_DEV ($(cat /sys/block/$disk/size) sectors)"
	# Runtime PM kept on for the disk and its SCSI target. Otherwise a logout that finds
	# the target's runtime-PM work pending WARNs in the kernel itself: the iSCSI class
	# removes the target from its WQ_MEM_RECLAIM workqueue, which flushes the PM work
	# of a workqueue without it (check_flush_dependency; seen once on 7.2, whichever
	# transport). Nothing of the transport is involved.
	local control
	for control in "/sys/block/$disk/device/power/control" \
		"/sys/block/$disk/device/../power/control"; do
		if [ -w "$control" ]; then
			echo on > "$control"
		fi
	done
	[ "$(cat /sys/block/$disk/size)" = "$ISER_LUN_SECTORS" ]
}

iser_logout() {
	echo "== logout"
	iscsiadm -m node -T "$ISER_TARGET" -p "$ISER_ADDR" -I iser --logout
}

# iser_data_checks: what goes in comes back the same: a random pattern over the whole LUN
# (1 MiB direct I/O), the same bytes read back with other block sizes, and random I/O of
# mixed sizes at queue depth 32 verified by fio.
iser_data_checks() {
	echo "== a pattern over the whole LUN, read back"
	head -c $((ISER_LUN_SECTORS * 512)) /dev/urandom > /tmp/pattern
	dd if=/tmp/pattern of="$ISER_DEV" bs=1M oflag=direct status=none
	local written read bs
	written=$(sha256sum < /tmp/pattern | cut -d' ' -f1)
	read=$(dd if="$ISER_DEV" bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1)
	echo "1M: written $written, read $read"
	[ "$written" = "$read" ]
	echo "== the first 32 MiB again, read with other block sizes"
	written=$(head -c 33554432 /tmp/pattern | sha256sum | cut -d' ' -f1)
	for bs in 4k 64k 512k; do
		read=$(dd if="$ISER_DEV" bs=$bs count=$((33554432 / $(numfmt --from=iec $bs))) iflag=direct status=none | sha256sum | cut -d' ' -f1)
		echo "$bs: read $read"
		[ "$written" = "$read" ]
	done
	rm /tmp/pattern
	echo "== random I/O, mixed sizes, queue depth 32, verified"
	fio --name=verify --filename="$ISER_DEV" --direct=1 --ioengine=libaio --iodepth=32 \
		--rw=randwrite --bssplit=4k/50:64k/30:512k/20 --size=64M --offset=128M \
		--verify=crc32c --do_verify=1 --verify_fatal=1 --output=fio-verify.log
	grep -E "err= *0" fio-verify.log
}

# iser_target_drop: the target ends the session under I/O (its portal group disabled for
# 3 s, which closes every connection); the initiator must recover and lose nothing.
iser_target_drop() {
	echo "== the target drops the session under I/O; the initiator recovers"
	head -c 67108864 /dev/urandom > /tmp/drop
	dd if=/tmp/drop of="$ISER_DEV" bs=64k seek=2048 oflag=direct status=none &
	local writer=$!
	sleep 0.5
	still_running "$writer" "the target dropped the session"
	echo 0 > "$ISER_TPG/enable"
	sleep 3
	echo 1 > "$ISER_TPG/enable"
	wait "$writer"
	local written read
	written=$(sha256sum < /tmp/drop | cut -d' ' -f1)
	read=$(dd if="$ISER_DEV" bs=64k skip=2048 count=1024 iflag=direct status=none | sha256sum | cut -d' ' -f1)
	echo "after recovery: written $written, read $read"
	[ "$written" = "$read" ]
	rm /tmp/drop
}

# iser_device_removal: `rdma link delete` under I/O. The session fails (recovery_tmo cut to
# 5 s), the writer gets I/O errors, the device goes away, nothing hangs; then logout.
iser_device_removal() {
	echo "== rdma link delete rxe0 under I/O"
	local tmo
	for tmo in /sys/class/iscsi_session/session*/recovery_tmo; do echo 5 > "$tmo"; done
	dd if=/dev/zero of="$ISER_DEV" bs=64k count=4096 oflag=direct status=none &
	local writer=$!
	sleep 0.5
	still_running "$writer" "the device removal"
	timeout 60 rdma link delete rxe0
	if wait "$writer"; then
		echo "note: the writer finished before the device went away"
	else
		echo "ok: the writer ended with I/O errors"
	fi
	rdma link show | tee links.log
	refute "rxe0 is still listed after its removal" grep -q rxe0 links.log
	iser_logout || true
}

# iser_unsolicited_check: with the target at InitialR2T=No, a write sends its first burst
# (64 KiB) unsolicited, immediate data then Data-Out PDUs, before the target reads the rest;
# the same bytes must come back. Logs in and out itself; the target is left as it was.
iser_unsolicited_check() {
	echo "== InitialR2T=No: unsolicited Data-Out"
	echo No > "$ISER_TPG/param/InitialR2T"
	iser_login
	iscsiadm -m session -P 2 | tee session.log | grep -E "InitialR2T|ImmediateData|FirstBurstLength"
	grep -q "InitialR2T: No" session.log
	head -c 33554432 /dev/urandom > /tmp/unsol
	dd if=/tmp/unsol of="$ISER_DEV" bs=128k seek=1024 oflag=direct status=none
	local written read
	written=$(sha256sum < /tmp/unsol | cut -d' ' -f1)
	read=$(dd if="$ISER_DEV" bs=128k skip=1024 count=256 iflag=direct status=none | sha256sum | cut -d' ' -f1)
	echo "unsolicited: written $written, read $read"
	[ "$written" = "$read" ]
	rm /tmp/unsol
	# 32 writes of 128 KiB at once want more Data-Out PDUs than the initiator may have in
	# flight: some wait their turn (requeued), none may be lost.
	fio --name=unsolicited --filename="$ISER_DEV" --direct=1 --ioengine=libaio --iodepth=32 \
		--rw=randwrite --bs=128k --size=32M --offset=160M \
		--verify=crc32c --do_verify=1 --verify_fatal=1 --output=fio-unsolicited.log
	grep -E "err= *0" fio-unsolicited.log
	iser_logout
	echo Yes > "$ISER_TPG/param/InitialR2T"
}
