"""A real crash: a map streaming into a `StreamWriter` is killed with SIGKILL mid-run, twice,
then resumed to completion; every item must be stored exactly once (data or errors shard),
with no temporary or uncommitted file left, shards numbered without gaps, flattened structured
outputs intact and a finished manifest. (The one SIGKILL suite: tests/io/test_writers.py covers
the writer's resume without killing a process.)"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

N_ITEMS = 20_000
SHARD = 500
BATCH = 100

CHILD = """
import json, sys, time
from hypernodes_chain import Graph, Runner, node
from hypernodes_chain.io import StreamWriter

out, fmt, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])


@node(output_name="y", batch=True)
def double(x: list[int]) -> list[int]:
    time.sleep(pause)  # a tiny pause per batch, so the kill lands mid-run
    return [2 * v for v in x]


@node(output_name="z")
def label(y: int) -> str:
    if y % 1994 == 0:  # every 997th item fails: the errors shards take part in the crash too
        raise ValueError(f"bad {y}")
    return f"v{y}"


@node(output_name="info")
def info(y: int) -> dict:
    return {"s": str(y), "half": y // 2}  # flattened into columns info.s and info.half


graph = Graph(nodes=[double, label, info], name="crash")
writer = StreamWriter(out, format=fmt, max_lines_per_file=__SHARD__, resume=True)
result = Runner().map(
    graph,
    inputs={"x": range(__N__)},
    map_over="x",
    batch_size=__BATCH__,
    writer=writer,
    on_error="collect",
)
print(json.dumps({"n_items": result.n_items, "n_skipped": result.n_skipped}))
"""
CHILD = CHILD.replace("__SHARD__", str(SHARD)).replace("__N__", str(N_ITEMS))
CHILD = CHILD.replace("__BATCH__", str(BATCH))


def start(script: Path, out: Path, fmt: str, pause: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), str(out), fmt, str(pause)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def n_committed(out: Path) -> int:
    try:
        return len(json.loads((out / "_manifest.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):
        return 0  # not written yet


def kill_mid_run(script: Path, out: Path, fmt: str, rng: random.Random) -> None:
    """Start a run, wait for one more committed shard, sleep a random delay, SIGKILL it."""
    before = n_committed(out)
    proc = start(script, out, fmt, pause=0.005)
    try:
        deadline = time.monotonic() + 60
        while n_committed(out) <= before:
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr}"
            assert time.monotonic() < deadline, "no shard committed within 60 s"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.25))
        assert proc.poll() is None, "the run finished before the kill; lengthen the pause"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL


def read_indices(file: Path) -> list[int]:
    if file.suffix == ".parquet":
        return pq.read_table(file, columns=["_index"]).column(0).to_pylist()
    with open(file) as f:
        return [json.loads(line)["_index"] for line in f if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_sigkill_then_resume_stores_every_item_once(tmp_path: Path, fmt: str) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "out"

    kill_mid_run(script, out, fmt, rng)
    assert 0 < n_committed(out) < N_ITEMS // SHARD, f"seed {seed}"
    kill_mid_run(script, out, fmt, rng)  # killed again, during the first resumed run
    assert not json.loads((out / "_manifest.json").read_text())["finished"]

    done = subprocess.run(
        [sys.executable, str(script), str(out), fmt, "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert 0 < summary["n_skipped"] < N_ITEMS, f"seed {seed}: {summary}"
    assert summary["n_items"] + summary["n_skipped"] == N_ITEMS

    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["finished"] is True
    listed = {s["file"] for s in manifest["shards"]} | {e["file"] for e in manifest["errors"]}
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    # no temporary files, and no shard written but never committed
    assert on_disk == listed | {"_manifest.json", "_writer.lock"}, f"seed {seed}"

    data = Counter(i for s in manifest["shards"] for i in read_indices(out / s["file"]))
    errors = Counter(i for e in manifest["errors"] for i in read_indices(out / e["file"]))
    assert max(data.values()) == 1, f"seed {seed}: duplicate rows"
    assert max(errors.values()) == 1, f"seed {seed}: duplicate failures"
    assert not set(data) & set(errors)
    assert set(data) | set(errors) == set(range(N_ITEMS)), f"seed {seed}: gaps"
    assert set(errors) == {i for i in range(N_ITEMS) if (2 * i) % 1994 == 0}
    assert manifest["n_rows"] == len(data)
    assert manifest["n_failed"] == len(errors)
    assert all(s["rows"] <= SHARD for s in manifest["shards"])
    files = [s["file"] for s in manifest["shards"]]
    assert files == [f"{i:03d}.{fmt}" for i in range(len(files))], f"seed {seed}: numbering"

    # the rows hold the right values, whichever run wrote them
    from hypernodes_chain.io import read_jsonl, read_parquet

    reader = read_parquet(out) if fmt == "parquet" else read_jsonl(out)
    for row in reader:
        assert row["y"] == 2 * row["x"]
        assert row["z"] == f"v{row['y']}"
        assert (row["info.s"], row["info.half"]) == (str(row["y"]), row["x"])
        assert row["_index"] == row["x"]


# -- an engine-aware map: two engines, one alive at a time, windows of items ---------------

ENGINE_ITEMS = 3_000
ENGINE_SHARD = 100

ENGINE_CHILD = """
import json, sys, time
sys.path.insert(0, __TESTS__)
from hypernodes_chain import Graph, Runner
from hypernodes_chain.engines import EngineBroker
from hypernodes_chain.io import StreamWriter
from hypernodes_chain.llm import llm_node
from support.scripted_engine import ScriptedEngine

out, fmt, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])


class Paused(ScriptedEngine):
    def generate(self, prompts, **sampling):
        time.sleep(pause)  # a tiny pause per batch, so the kill lands mid-run
        return super().generate(prompts, **sampling)


def rejected(i):  # whole batches (the first of some windows among them), and single items
    return (i // 10) % 9 == 4 or i % 200 == 0 or i % 97 == 5


@llm_node(engine="upper", output_name="loud")
def loud(word: str) -> str:
    if rejected(int(word[1:])):
        raise ValueError(f"{word} is rejected")
    return f"{word}!"


@llm_node(engine="reverse", output_name="mirrored")
def mirrored(loud: str, word: str) -> str:
    return f"<{loud}|{word}>"


broker = EngineBroker({"upper": lambda: Paused("upper"), "reverse": lambda: Paused("reverse")},
                      max_live=1)
writer = StreamWriter(out, format=fmt, max_lines_per_file=__SHARD__, resume=True)
result = Runner(engines=broker).map(
    Graph([loud, mirrored], name="two_engines"),
    inputs={"word": (f"w{i}" for i in range(__N__))},
    map_over="word",
    batch_size=10,
    engine_window=200,
    writer=writer,
    on_error="collect",
)
print(json.dumps({"n_items": result.n_items, "n_skipped": result.n_skipped}))
"""
ENGINE_CHILD = ENGINE_CHILD.replace("__TESTS__", repr(str(Path(__file__).parent)))
ENGINE_CHILD = ENGINE_CHILD.replace("__SHARD__", str(ENGINE_SHARD))
ENGINE_CHILD = ENGINE_CHILD.replace("__N__", str(ENGINE_ITEMS))


def engine_rejected(i: int) -> bool:
    return (i // 10) % 9 == 4 or i % 200 == 0 or i % 97 == 5


@pytest.mark.slow
def test_an_engine_aware_map_killed_and_resumed_stores_every_item_once(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    script = tmp_path / "child.py"
    script.write_text(ENGINE_CHILD)
    out = tmp_path / "out"

    kill_mid_run(script, out, "jsonl", rng)
    kill_mid_run(script, out, "jsonl", rng)  # killed again, during the first resumed run
    assert not json.loads((out / "_manifest.json").read_text())["finished"]
    assert (out / "_spill").is_dir(), "a killed run leaves its spills (the next removes them)"
    done = subprocess.run(
        [sys.executable, str(script), str(out), "jsonl", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert 0 < summary["n_skipped"] < ENGINE_ITEMS, f"seed {seed}: {summary}"

    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["finished"] is True
    listed = {s["file"] for s in manifest["shards"]} | {e["file"] for e in manifest["errors"]}
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    # no temporary files, no uncommitted shard, no spill of the killed runs
    assert on_disk == listed | {"_manifest.json", "_writer.lock"}, f"seed {seed}"
    assert not (out / "_spill").exists()

    data = Counter(i for s in manifest["shards"] for i in read_indices(out / s["file"]))
    errors = Counter(i for e in manifest["errors"] for i in read_indices(out / e["file"]))
    assert max(data.values()) == 1, f"seed {seed}: duplicate rows"
    assert max(errors.values()) == 1, f"seed {seed}: duplicate failures"
    assert set(errors) == {i for i in range(ENGINE_ITEMS) if engine_rejected(i)}, f"seed {seed}"
    assert set(data) == {i for i in range(ENGINE_ITEMS) if not engine_rejected(i)}, f"seed {seed}"

    from hypernodes_chain.io import read_jsonl

    wrong = []
    for row in read_jsonl(out):  # the rows hold the right values, whichever run wrote them
        word = f"w{row['_index']}"
        shouted = f"{word.upper()}!"
        if (row["word"], row["loud"], row["mirrored"]) != (
            word, shouted, f"<{shouted}|{word}>"[::-1]
        ):  # fmt: skip
            wrong.append(row)
    assert not wrong, f"seed {seed}: {len(wrong)} wrong rows, e.g. {wrong[:3]}"
