"""The iser-bench table: fio's JSON of each initiator and round, side by side."""
import json
import os
import statistics
import sys

JOBS = ["randread-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd1", "randwrite-4k-qd32",
        "read-128k-qd8", "write-128k-qd8"]


def result(path):
    with open(path) as f:
        job = json.load(f)["jobs"][0]
    side = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
    return side["iops"], side["bw"] / 1024.0, side["lat_ns"]["mean"] / 1000.0


def main(directory, output):
    rows = []
    table = {}
    print(f"{'job':<18} {'ib_iser IOPS':>12} {'tilde IOPS':>11} {'ratio':>6}"
          f" {'ib_iser MiB/s':>13} {'tilde MiB/s':>11} {'ib_iser lat us':>14}"
          f" {'tilde lat us':>12} {'lat ratio':>9}")
    for job in JOBS:
        means = {}
        for initiator in ["ib_iser", "tilde"]:
            runs = [result(os.path.join(directory, f"{initiator}-{r}-{job}.json"))
                    for r in (1, 2)]
            means[initiator] = [statistics.mean(v) for v in zip(*runs)]
            means[initiator + "_runs"] = runs
        c, t = means["ib_iser"], means["tilde"]
        table[job] = means
        print(f"{job:<18} {c[0]:>12.0f} {t[0]:>11.0f} {t[0] / c[0]:>6.3f}"
              f" {c[1]:>13.1f} {t[1]:>11.1f} {c[2]:>14.0f} {t[2]:>12.0f}"
              f" {t[2] / c[2]:>9.3f}")
    with open(output, "w") as f:
        json.dump(table, f, indent=1)


main(sys.argv[1], sys.argv[2])
