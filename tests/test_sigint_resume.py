"""A real Ctrl-C: a map streaming 150,000 items into a `StreamWriter` gets `SIGINT` at a
random moment (once, or twice with a resume in between), then is resumed to completion.
Every item must be stored exactly once (a data row or an error record), the failures must be
exactly the expected ones, no temporary file may be left, and `_manifest.json` must list
exactly the shards on disk with their true row counts.

The moment: after a random number of committed shards (0..99, so spread over the whole run),
plus a random fraction of the time between two commits, so the signal lands inside a commit
(shard rename, manifest rewrite) as often as between them. Run with ``-s`` to see one line per
trial and a summary (trials, interrupted runs, lost, duplicated)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

# 300,000 items per map, as the issue asks (about 2 minutes for the 20 trials on 2 cores);
# HNC_SIGINT_ITEMS=50000 for a quicker local run
N_ITEMS = int(os.environ.get("HNC_SIGINT_ITEMS", "300000"))
SHARD = N_ITEMS // 100  # 100 data shards: a commit every few tens of milliseconds
N_SHARDS = N_ITEMS // SHARD
BATCH = 1_000
FAILED = frozenset(range(0, N_ITEMS, 997))  # the items the `label` node fails
TRIALS = range(10)
FORMATS = ["jsonl", "parquet"]

MANIFEST = "_manifest.json"
ERRORS = "_errors"
DATA_RE = re.compile(r"^\d{3,}\.(jsonl|parquet)$")
ERRORS_RE = re.compile(rf"^{ERRORS}/\d{{3,}}\.jsonl$")
NOT_DATA = {MANIFEST, "_writer.lock"}

CHILD = """
import asyncio, json, sys, time
from hypernodes_chain import AsyncRunner, Graph, Runner, node
from hypernodes_chain.io import StreamWriter

out, fmt, runner = sys.argv[1], sys.argv[2], sys.argv[3]


@node(output_name="y", batch=True)
def double(x: list[int]) -> list[int]:
    return [2 * v for v in x]


@node(output_name="z")
def label(x: int, y: int) -> str:
    if x % 997 == 0:  # deterministic failures, so error records take part in the interrupt
        raise ValueError(f"bad {x}")
    return f"v{y}"


graph = Graph(nodes=[double, label], name="sigint")
writer = StreamWriter(out, format=fmt, max_lines_per_file=__SHARD__, resume=True)
print("started", flush=True)
t0 = time.perf_counter()
kwargs = dict(map_over="x", batch_size=__BATCH__, writer=writer, on_error="collect")
inputs = {"x": range(__N__)}
if runner == "async":  # asyncio.run turns SIGINT into a cancelled task, then KeyboardInterrupt
    result = asyncio.run(AsyncRunner().map(graph, inputs, **kwargs))
else:
    result = Runner().map(graph, inputs, **kwargs)
summary = {"seconds": time.perf_counter() - t0, "n_items": result.n_items}
summary["n_skipped"] = result.n_skipped
print(json.dumps(summary), flush=True)
"""
CHILD = CHILD.replace("__SHARD__", str(SHARD)).replace("__N__", str(N_ITEMS))
CHILD = CHILD.replace("__BATCH__", str(BATCH))

SUMMARY: list[dict[str, int]] = []


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def n_data_shards(out: Path) -> int:
    try:
        return sum(1 for e in os.scandir(out) if DATA_RE.match(e.name))
    except FileNotFoundError:
        return 0


def run_to_completion(script: Path, out: Path, fmt: str, runner: str = "sync") -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(script), str(out), fmt, runner],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    assert summary["n_items"] + summary["n_skipped"] == N_ITEMS, summary  # this run + earlier
    return summary


def interrupt(
    script: Path, out: Path, fmt: str, after_shards: int, delay: float, runner: str = "sync"
) -> bool:
    """Start a run; once ``after_shards`` data shards exist, wait ``delay`` s and send SIGINT.

    True if the run died of it (False: it finished first)."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out), fmt, runner],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "started":
            proc.kill()
            _, err = proc.communicate(timeout=60)
            pytest.fail(f"the child did not start: {line!r}\n{err[-4000:]}")
        while n_data_shards(out) < after_shards and proc.poll() is None:
            time.sleep(0.003)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode == 0:
        return False
    # it must have died of the Ctrl-C (a KeyboardInterrupt), not of an error raised after it
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert proc.returncode == -signal.SIGINT or last.startswith("KeyboardInterrupt"), (
        f"the interrupted run failed otherwise (rc {proc.returncode}):\n{err[-4000:]}"
    )
    return True


def entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file entry of the manifest: data shards, then error shards."""
    return [*manifest["shards"], *manifest["errors"]]


def read_data(file: Path) -> list[tuple[int, int, int, str]]:
    """(_index, x, y, z) of every row of a data shard."""
    if file.suffix == ".parquet":
        table = pq.read_table(file, columns=["_index", "x", "y", "z"])
        return list(zip(*(table.column(k).to_pylist() for k in ("_index", "x", "y", "z"))))
    with open(file) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r["_index"], r["x"], r["y"], r["z"]) for r in rows]


def read_errors(file: Path) -> list[dict[str, Any]]:
    with open(file) as f:
        return [json.loads(line) for line in f if line.strip()]


def check_entry(out: Path, entry: dict[str, Any], indices: list[int]) -> None:
    """The manifest's record of one file agrees with the file (see `ShardEntry`)."""
    name = entry["file"]
    assert entry["rows"] == len(indices), (
        f"{name}: the manifest says {entry['rows']} rows, the file holds {len(indices)}"
    )
    assert (entry["first_index"], entry["last_index"]) == (min(indices), max(indices)), name
    covered = [i for start, stop in entry["ranges"] for i in range(start, stop)]  # [start, stop)
    assert covered == sorted(indices), f"{name}: its ranges disagree with its rows"
    data = (out / name).read_bytes()
    assert entry["size"] == len(data), f"{name}: size"
    assert entry["blake2b"] == hashlib.blake2b(data, digest_size=16).hexdigest(), name


def check_folder(out: Path, fmt: str, label: str, n_interrupted: int) -> None:
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    temps = sorted(f for f in on_disk if Path(f).name.endswith(".tmp"))
    data = {f for f in on_disk if DATA_RE.match(f)}
    errors = {f for f in on_disk if ERRORS_RE.match(f)}
    stray = on_disk - data - errors - NOT_DATA - set(temps)
    assert MANIFEST in on_disk, f"{label}: no {MANIFEST}; files: {sorted(on_disk)[:8]}"
    assert not stray, f"{label}: files that are neither shards nor the manifest: {sorted(stray)}"

    rows = {name: read_data(out / name) for name in sorted(data)}
    records = {name: read_errors(out / name) for name in sorted(errors)}
    per_file = {name: [r[0] for r in rs] for name, rs in rows.items()}
    per_file.update({name: [r["_index"] for r in rs] for name, rs in records.items()})
    seen = Counter(i for indices in per_file.values() for i in indices)
    lost = sum(1 for i in range(N_ITEMS) if i not in seen)
    duplicated = sum(c - 1 for c in seen.values() if c > 1)
    SUMMARY.append({"interrupted": n_interrupted, "lost": lost, "dup": duplicated})
    print(f"\n[{label}] interrupted runs {n_interrupted}: lost {lost}, duplicated {duplicated}")
    assert lost == duplicated == 0, f"{label}: lost {lost}, duplicated {duplicated} items"
    assert set(seen) == set(range(N_ITEMS)), f"{label}: indices outside 0..{N_ITEMS - 1}"

    assert not temps, f"{label}: temporary files left: {temps}"
    assert {Path(f).suffix for f in data} <= {f".{fmt}"}, f"{label}: {sorted(data)}"

    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["finished"] is True, label
    listed = entries(manifest)
    names = [e["file"] for e in listed]
    assert len(names) == len(set(names)), f"{label}: a file listed twice: {names}"
    listed_data = {e["file"] for e in manifest["shards"]}
    assert listed_data == data, (
        f"{label}: manifest and disk disagree on {sorted(listed_data ^ data)}"
    )
    listed_errors = {e["file"] for e in manifest["errors"]}
    assert listed_errors == errors, f"{label}: {sorted(listed_errors ^ errors)}"
    for entry in listed:
        check_entry(out, entry, per_file[entry["file"]])
    assert (manifest["n_rows"], manifest["n_failed"]) == (N_ITEMS - len(FAILED), len(FAILED))

    failed = {r["_index"] for rs in records.values() for r in rs}
    assert failed == FAILED, f"{label}: the failed items are not exactly x % 997 == 0"
    for rs in records.values():
        for r in rs:
            assert (r["node"], r["error_type"]) == ("label", "ValueError"), r
    for name, rs in rows.items():  # the rows hold the right values, whichever run wrote them
        for index, x, y, z in rs:
            assert (index, y, z) == (x, 2 * x, f"v{2 * x}"), f"{label}: {name} row {index}"


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sigint") / "child.py"
    path.write_text(CHILD)
    return path


@pytest.fixture(scope="module", autouse=True)
def print_summary() -> Iterator[None]:
    yield
    if SUMMARY:
        lost = sum(t["lost"] for t in SUMMARY)
        dup = sum(t["dup"] for t in SUMMARY)
        hit = sum(t["interrupted"] for t in SUMMARY)
        print(
            f"\nSIGINT resume: {len(SUMMARY)} trials, {hit} interrupted runs, "
            f"lost {lost}, duplicated {dup}"
        )


def trial(tmp_path: Path, script: Path, fmt: str, seed: int, runner: str) -> None:
    rng = random.Random(f"{fmt}-{seed}" if runner == "sync" else f"{runner}-{fmt}-{seed}")
    out = tmp_path / "out"
    n_signals = 2 if seed % 3 == 2 else 1  # some trials: SIGINT, resume, SIGINT, resume
    n_interrupted = 0
    for _ in range(n_signals):
        after = rng.randint(min(n_data_shards(out), N_SHARDS - 1), N_SHARDS - 1)
        delay = rng.uniform(0.0, 0.04)
        n_interrupted += interrupt(script, out, fmt, after, delay, runner)
    assert n_interrupted, f"seed {seed}: the map finished before any SIGINT landed"
    run_to_completion(script, out, fmt, runner)
    check_folder(out, fmt, f"{runner} {fmt} seed {seed}", n_interrupted)


@pytest.mark.slow
@pytest.mark.parametrize("seed", TRIALS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_sigint_then_resume_stores_every_item_once(
    tmp_path: Path, script: Path, fmt: str, seed: int
) -> None:
    trial(tmp_path, script, fmt, seed, "sync")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("fmt", FORMATS)
def test_sigint_under_async_runner_then_resume_stores_every_item_once(
    tmp_path: Path, script: Path, fmt: str, seed: int
) -> None:
    """AsyncRunner keeps two batches in flight and hands SIGINT to asyncio's own handler."""
    trial(tmp_path, script, fmt, seed, "async")
