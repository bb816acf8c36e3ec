"""Writer benchmark: 1,000,000 rows of {_index, x, a, b, c} ints to parquet shards.

Compares ``StreamWriter`` (batches of 1024 items, as ``map`` hands them over) with the
hand-written limit (``pq.write_table`` per 100,000-row chunk of ready columns). Each variant
runs in its own process, so its peak RSS (``ru_maxrss``) is its own. "writer s" is the
time spent inside the writer calls, without building the items (the runner's job).

Note: when pandas is installed, pyarrow imports it on the first ``pa.array`` of a Python list
(about +50 MB RSS and 0.5 s); the limit pays that, the writer's numeric fast path does not.

    python benchmarks/bench_writer.py [--rows N] [--max-lines N] [--batch N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_stream_writer(out: Path, rows: int, max_lines: int, batch: int) -> float:
    """Returns the seconds spent inside the writer (building the items is the runner's)."""
    from hypernodes_chain.io import StreamWriter

    clock = time.perf_counter
    start = clock()
    writer = StreamWriter(out, format="parquet", max_lines_per_file=max_lines)
    writer.open(graph_name="bench", input_names=["x"], output_names=["a", "b", "c"])
    inside = clock() - start
    for first in range(0, rows, batch):
        items = [
            (i, {"x": i}, {"a": i + 1, "b": 2 * i, "c": 3 * i + 1})
            for i in range(first, min(first + batch, rows))
        ]
        start = clock()
        writer.write_batch(items, [])
        inside += clock() - start
    start = clock()
    result = writer.close()
    inside += clock() - start
    assert result.n_ok == rows, result
    return inside


def run_pyarrow(out: Path, rows: int, max_lines: int, batch: int) -> float:
    began = time.perf_counter()
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True)
    for shard, start in enumerate(range(0, rows, max_lines)):
        idx = list(range(start, min(start + max_lines, rows)))
        columns = {
            "_index": idx,
            "x": idx,
            "a": [i + 1 for i in idx],
            "b": [2 * i for i in idx],
            "c": [3 * i + 1 for i in idx],
        }
        pq.write_table(pa.Table.from_pydict(columns), out / f"{shard:03d}.parquet")
    return time.perf_counter() - began


VARIANTS = {"stream_writer": run_stream_writer, "pyarrow_limit": run_pyarrow}


def _child(variant: str, rows: int, max_lines: int, batch: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        inside = VARIANTS[variant](Path(tmp) / "out", rows, max_lines, batch)
        wall = time.perf_counter() - start
    result = {"variant": variant, "wall_s": wall, "writer_s": inside, "peak_rss_mb": _peak_rss_mb()}
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--max-lines", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.rows, args.max_lines, args.batch)
        return
    print(f"{args.rows:,} rows, max_lines_per_file={args.max_lines:,}, batches of {args.batch}")
    print(f"{'variant':<16}{'wall s':>9}{'writer s':>10}{'peak RSS MB':>14}")
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--child", variant, "--rows", str(args.rows)]
        cmd += ["--max-lines", str(args.max_lines), "--batch", str(args.batch)]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        res = json.loads(line.strip().splitlines()[-1])
        print(
            f"{variant:<16}{res['wall_s']:>9.2f}{res['writer_s']:>10.2f}{res['peak_rss_mb']:>14.0f}"
        )


if __name__ == "__main__":
    main()
