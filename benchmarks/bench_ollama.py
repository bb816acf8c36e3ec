"""Ollama protocol at the engine's limit: ``@llm_node`` maps against 8 client threads.

    python benchmarks/bench_ollama.py [--n 128] [--reps 3] [--delay 0.05]
                                      [--slow-every 8] [--slow-factor 10]

The loopback server of tests/support/ollama_server.py runs without a model: each reply takes
``--delay`` seconds (50 ms), and one prompt in ``--slow-every`` (chosen by a hash of the
prompt, so every contender gets the same work) ``--slow-factor`` times as long, as replies of
varied length do. The server answers any number of requests at once (as a GPU-backed Ollama
does), counts the requests in flight and integrates that count over time, so each run reports
the most in flight and the time-weighted mean while it ran.

Contenders, over the same ``--n`` prompts (96 to 256):
- the limit: ``ThreadPoolExecutor(8)`` over every prompt, each thread with its own official
  ``ollama.Client`` (8 requests in flight whenever 8 are left);
- one ``@llm_node(cache=False)`` mapped with ``batch_size=8`` and ``batch_size=64`` on one
  ``OllamaEngine(max_concurrency=8)``, under ``Runner`` and under ``AsyncRunner``.
The engine is started before any timing; every contender runs once to warm up, then the
contenders take turns, one run each per round, ``--reps`` rounds (5). Replies are checked
against the limit's. Printed per contender: the median and the fastest wall time, prompts/s and the ratio
to the limit's throughput (of the medians), the most requests in flight in any run, and the
median of the runs' time-weighted mean in flight. Targets:
>= 0.9 of the limit, max in flight <= 8, mean >= 6. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "support" / "ollama_server.py"
WORKERS = 8  # client threads of the limit = the engine's max_concurrency
MODEL = "tiny"
TOKENS = 16
TARGET_RATIO, TARGET_MEAN = 0.9, 6.0


class LoopbackServer:
    """The Ollama-protocol server in a subprocess, with its window of requests in flight."""

    def __init__(self, delay: float, slow_every: int, slow_factor: float) -> None:
        command = [
            sys.executable, str(SERVER), "--port", "0", "--name", MODEL, "--delay", str(delay),
            "--slow-every", str(slow_every), "--slow-factor", str(slow_factor),
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            raise SystemExit(f"the loopback Ollama server did not start (exit {self.proc.poll()})")
        self.host = f"http://127.0.0.1:{int(line)}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.host}{path}", timeout=10) as reply:
            return json.loads(reply.read())

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def prompts_of(n: int) -> list[str]:
    return [f"review {i}: the food was {('good', 'bad', 'fine')[i % 3]}" for i in range(n)]


def is_slow(prompt: str, slow_every: int) -> bool:
    """The server's own choice (tests/support/ollama_server.py, `State.delay_of`)."""
    return slow_every > 1 and zlib.crc32(json.dumps(prompt).encode()) % slow_every == 0


# --------------------------------------------------------------------------- contenders
def limit_contender(host: str) -> tuple[Callable[[list[str]], list[str]], Callable[[], None]]:
    """8 threads over every prompt, each with its own ``ollama.Client``."""
    import ollama

    local = threading.local()
    pool = ThreadPoolExecutor(WORKERS)
    options = {"num_predict": TOKENS, "temperature": 0.0}

    def ask(prompt: str) -> str:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = ollama.Client(host=host)
        return str(client.generate(model=MODEL, prompt=prompt, options=options).response)

    return (lambda prompts: list(pool.map(ask, prompts))), pool.shutdown


def map_contender(runner_kind: str, batch_size: int, engines: Any) -> Callable[[list[str]], Any]:
    from hypernodes_chain import AsyncRunner, Graph, Runner
    from hypernodes_chain.llm import llm_node

    @llm_node(engine="o", output_name="reply", cache=False, max_tokens=TOKENS)
    def answer(review: str) -> str:
        return review

    graph = Graph([answer])
    if runner_kind == "AsyncRunner":
        arunner = AsyncRunner(engines=engines)

        def run_async(prompts: list[str]) -> list[str]:
            out = asyncio.run(
                arunner.map(graph, {"review": prompts}, map_over="review", batch_size=batch_size)
            )
            return [row["reply"] for row in out]

        return run_async
    runner = Runner(engines=engines)

    def run(prompts: list[str]) -> list[str]:
        out = runner.map(graph, {"review": prompts}, map_over="review", batch_size=batch_size)
        return [row["reply"] for row in out]

    return run


# --------------------------------------------------------------------------- timing
def timed_run(server: LoopbackServer, fn: Callable[[list[str]], list[str]], prompts: list[str]):
    gc.collect()
    server.get("/debug/window/start")
    t0 = time.perf_counter()
    replies = fn(prompts)
    seconds = time.perf_counter() - t0
    window = server.get("/debug/window")
    return seconds, window, replies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="prompts (96 to 256)")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per contender (>= 3)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds of a reply")
    parser.add_argument("--slow-every", type=int, default=8, help="one prompt in K is slow")
    parser.add_argument("--slow-factor", type=float, default=10.0, help="how much slower")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(ROOT / "src"))
    from hypernodes_chain.engines import EngineBroker, OllamaEngine

    prompts = prompts_of(args.n)
    slow = sum(is_slow(p, args.slow_every) for p in prompts)
    work = (args.n - slow) * args.delay + slow * args.delay * args.slow_factor
    print(
        f"Python {platform.python_version()}, ollama {metadata.version('ollama')}, "
        f"httpx {metadata.version('httpx')}, nproc {os.cpu_count()}"
    )
    print(
        f"{args.n} prompts: {args.n - slow} answered in {args.delay * 1000:.0f} ms, {slow} in "
        f"{args.delay * args.slow_factor * 1000:.0f} ms; {work:.2f} s of replies, "
        f"{work / WORKERS:.2f} s at {WORKERS} in flight (the floor); "
        f"median of {args.reps} runs, round-robin after a warm-up\n"
    )
    server = LoopbackServer(args.delay, args.slow_every, args.slow_factor)
    engine = OllamaEngine(MODEL, host=server.host, max_concurrency=WORKERS)
    broker = EngineBroker({"o": engine})
    limit, close_limit = limit_contender(server.host)
    contenders: dict[str, Callable[[list[str]], list[str]]] = {
        f"limit: ThreadPoolExecutor({WORKERS}), an ollama.Client per thread": limit
    }
    for kind in ("Runner", "AsyncRunner"):
        for batch in (8, 64):
            name = f"{kind}.map, batch_size={batch}, max_concurrency={WORKERS}"
            contenders[name] = map_contender(kind, batch, broker)
    results: dict[str, list[tuple[float, dict[str, Any]]]] = {name: [] for name in contenders}
    try:
        engine.start()
        expected = None
        for name, fn in contenders.items():  # warm-up, and every contender's replies checked
            _, _, replies = timed_run(server, fn, prompts)
            expected = replies if expected is None else expected
            if replies != expected:
                raise SystemExit(f"{name}: replies differ from the limit's")
        for _ in range(args.reps):
            for name, fn in contenders.items():
                seconds, window, _ = timed_run(server, fn, prompts)
                results[name].append((seconds, window))
    finally:
        close_limit()
        broker.close()
        server.close()
    print_table(results, args.n)


def print_table(results: dict[str, list[tuple[float, dict[str, Any]]]], n: int) -> None:
    rows = []
    for name, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        fastest = min(r[0] for r in runs)
        peak = max(r[1]["peak"] for r in runs)
        mean = statistics.median(r[1]["mean"] for r in runs)
        rows.append((name, seconds, fastest, peak, mean))
    limit_rate = n / rows[0][1]
    print(
        "| contender | median s | fastest s | prompts/s | x limit | max in flight "
        "| mean in flight | target |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for k, (name, seconds, fastest, peak, mean) in enumerate(rows):
        rate = n / seconds
        ratio = rate / limit_rate
        if k == 0:
            verdict = "(the limit)"
        else:
            ok = ratio >= TARGET_RATIO and peak <= WORKERS and mean >= TARGET_MEAN
            verdict = "PASS" if ok else "FAIL"
        print(
            f"| {name} | {seconds:.3f} | {fastest:.3f} | {rate:.1f} | {ratio:.2f} | {peak} "
            f"| {mean:.2f} | {verdict} |"
        )
    print(
        f"\ntarget: >= {TARGET_RATIO} x the limit's prompts/s, at most {WORKERS} in flight, "
        f"a mean of >= {TARGET_MEAN:.0f} in flight while the map runs"
    )


if __name__ == "__main__":
    main()
