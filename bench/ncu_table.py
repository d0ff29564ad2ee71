"""Sums an `ncu --csv --metrics gpu__time_duration.sum` report by kernel name (first 60 characters)
into a markdown table, largest total first: `ncu_table.py NCU_CSV WHAT`."""
import collections
import csv
import io
import sys

SCALE_TO_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}


def main(path, what):
    lines = open(path).read().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    totals = collections.defaultdict(lambda: [0, 0.0])
    for row in csv.DictReader(io.StringIO("\n".join(lines[header:]))):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        micros = float(row["Metric Value"].replace(",", "")) * SCALE_TO_US[row["Metric Unit"]]
        entry = totals[row["Kernel Name"][:60]]
        entry[0] += 1
        entry[1] += micros
    print(f"ncu gpu__time_duration.sum of one {what} training step's matched launches\n")
    launches, micros = sum(c for c, _ in totals.values()), sum(m for _, m in totals.values())
    print(f"{launches} launches, {micros / 1e3:.2f} ms in all\n")
    print("| kernel | launches | total ms | mean µs |\n| --- | --- | --- | --- |")
    for name, (count, micros) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        print(f"| {name} | {count} | {micros / 1e3:.2f} | {micros / count:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
