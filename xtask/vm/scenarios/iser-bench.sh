# fio through tilde's iSER initiator (tilde_iser) and the kernel's (ib_iser), against the
# same LIO target over rxe0 in the same run: 4 KiB random read and write at queue depth 1
# and 32, 128 KiB sequential read and write. Two rounds, the initiators taking turns
# (ib_iser, tilde, ib_iser, tilde); the table gives each one's mean and tilde/ib_iser.
# A benchmark, not a test: `cargo xtask vm iser-bench`; numbers in the scenario log and
# out/iser-bench.json.
# benchmark
# needs-module: tilde_iser
. /tilde/guest/lib.sh
. /tilde/guest/iser.sh

iser_target_up
modprobe rdma_cm
modprobe libiscsi
modprobe sd_mod
iser_iscsid
# Results go back to the host with the logs (target/vm/<target>/iser-bench/out).
BENCH=/tilde/out/bench
mkdir -p "$BENCH"

# bench_jobs NAME: every job against the disk, fio's JSON in bench/NAME-JOB.json.
bench_jobs() {
	local name=$1 job rw bs depth
	for job in randread-4k-qd1:randread:4k:1 randread-4k-qd32:randread:4k:32 \
		randwrite-4k-qd1:randwrite:4k:1 randwrite-4k-qd32:randwrite:4k:32 \
		read-128k-qd8:read:128k:8 write-128k-qd8:write:128k:8; do
		IFS=: read -r job rw bs depth <<< "$job"
		fio --name="$job" --filename="$ISER_DEV" --direct=1 --ioengine=libaio \
			--rw="$rw" --bs="$bs" --iodepth="$depth" --size=192M --time_based \
			--ramp_time=2 --runtime=8 --output-format=json --output="$BENCH/$name-$job.json"
		echo "$name $job done"
	done
}

for round in 1 2; do
	modprobe ib_iser
	iser_login
	bench_jobs "ib_iser-$round"
	iser_logout
	rmmod ib_iser
	insmod /tilde/ulps/tilde_iser.ko
	iser_login
	bench_jobs "tilde-$round"
	iser_logout
	rmmod tilde_iser
done

python3 /tilde/guest/iser_bench_table.py "$BENCH" /tilde/out/iser-bench.json | tee /tilde/out/iser-bench.txt
pkill iscsid || true
iser_target_down
