# Fault injection on the debug kernel (failslab, fail_page_alloc), for the fault-inject
# scenarios: the knobs, the module-text filter, and the iSER data rounds run under random
# failures.

DBG=/sys/kernel/debug
mountpoint -q "$DBG" || mount -t debugfs debugfs "$DBG"
gcc -O2 -Wall -o /tmp/failnth /tilde/guest/failnth.c
POINTS=/tilde/out/fault-points.txt
: > "$POINTS"

# Module memory on x86-64: from MODULES_VADDR to MODULES_END.
MODULES_START=0xffffffffc0000000
MODULES_END=0xffffffffff000000

# symbol_range NAME: "START END" of the kernel function NAME (END: the next symbol).
symbol_range() {
	awk '$2 == "t" || $2 == "T" { print $1, $3 }' /proc/kallsyms | sort |
		awk -v f="$1" 'found == 1 { print "0x" start, "0x" $1; found = 2 }
			$2 == f && !found { found = 1; start = $1 }'
}

# Allocations vmalloc makes are not failed: the kernel reports a failed vmalloc with a
# stack trace by design (warn_alloc), which the verdict cannot tell from a bug's report.
range=$(symbol_range __vmalloc_node_range_noprof)
VMALLOC_START=${range% *}
VMALLOC_END=${range#* }
[ -n "$VMALLOC_START" ] && [ "$VMALLOC_START" != "$VMALLOC_END" ]

# fault_setup START END: every allocation whose stack passes through [START, END) can be
# failed: GFP_KERNEL ones too (the knobs leave them out by default), single pages too;
# no line per failure (verbose 0: the log keeps room for what the failures cause).
fault_setup() {
	local knob
	for knob in failslab fail_page_alloc; do
		echo "$VMALLOC_START" > "$DBG/$knob/reject-start"
		echo "$VMALLOC_END" > "$DBG/$knob/reject-end"
		echo N > "$DBG/$knob/ignore-gfp-wait"
		echo 0 > "$DBG/$knob/verbose"
		echo 32 > "$DBG/$knob/stacktrace-depth"
		echo "$1" > "$DBG/$knob/require-start"
		echo "$2" > "$DBG/$knob/require-end"
	done
	echo 0 > "$DBG/fail_page_alloc/min-order"
	echo N > "$DBG/fail_page_alloc/ignore-gfp-highmem"
}

# module_text MODULE: "START END" of MODULE's functions (from kallsyms), END rounded up a
# page past the last one.
module_text() {
	local first last
	awk -v m="[$1]" '$4 == m && ($2 == "t" || $2 == "T") { print $1 }' /proc/kallsyms |
		sort > /tmp/text-symbols
	first=$(head -n 1 /tmp/text-symbols)
	last=$(tail -n 1 /tmp/text-symbols)
	printf '0x%s 0x%x\n' "$first" $((0x$last + 4096))
}

# random_round BS MIB: a fresh pattern of MIB MiB at the disk's start, written and read
# back with block size BS. Either side may get an error; if neither did, the bytes must be
# equal.
random_round() {
	local written read bytes=$(($2 * 1048576))
	head -c "$bytes" /dev/urandom > /tmp/pattern
	written=$(sha256sum < /tmp/pattern | cut -d' ' -f1)
	if ! dd if=/tmp/pattern of="$ISER_DEV" bs="$1" oflag=direct status=none; then
		echo "$1: the write got an error"
		return 0
	fi
	if ! read=$(dd if="$ISER_DEV" bs="$1" count=$((bytes / $(numfmt --from=iec "$1"))) \
		iflag=direct status=none | sha256sum | cut -d' ' -f1); then
		echo "$1: the read got an error"
		return 0
	fi
	echo "$1: written $written, read $read"
	[ "$written" = "$read" ]
}

# random_phase: with the filter fault_setup set, 1 in 500 of the allocations under it
# fail while four rounds of writes and reads run on the logged-in disk; then, with nothing
# failed, one more round must read back the same bytes. A failure under tilde_iser ends
# the connection and iscsid makes a new one (about 10 s on the debug kernel), so the
# rounds are sized by commands, about a thousand each at most: 64 MiB at 1M and 512k,
# 16 MiB at 64k, 4 MiB at 4k.
random_phase() {
	local knob bs
	# `times` counts down once per injected failure: what it lost is how many there were.
	for knob in failslab fail_page_alloc; do
		echo 500 > "$DBG/$knob/interval"
		echo 100 > "$DBG/$knob/probability"
		echo 1000000 > "$DBG/$knob/times"
	done
	for bs in 1M:64 64k:16 4k:4 512k:64; do
		random_round "${bs%:*}" "${bs#*:}"
	done
	for knob in failslab fail_page_alloc; do
		echo 0 > "$DBG/$knob/probability"
		echo "random: $knob failed $((1000000 - $(cat "$DBG/$knob/times"))) allocations" | tee -a "$POINTS"
	done
	echo "== after the injections: the session carries data, every byte the same"
	random_round 1M 64 | tee /tmp/after.log
	grep -q "written .*, read " /tmp/after.log
}
