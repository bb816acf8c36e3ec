"""TransformersEngine: two LLM nodes sharing one engine in one map, against the raw model loop.

    python benchmarks/bench_transformers.py [--n 256] [--tokens 32] [--max-batch-size 64]
                                            [--batch-size 32,64] [--reps 9] [--threads 1]
                                            [--runners sync,async] [--batch-wait S]
                                            [--device cpu]

Every item of the map asks the engine twice: ``@llm_node first(text)`` ("summarize: ...")
and ``@llm_node second(text)`` ("label: ..."), both greedy, ``max_tokens=T``, no cache, on ONE
``TransformersEngine(max_batch_size=M)`` started before any timing; the map runs under
``Runner`` (batches in threads, the engine fed by several at once) and ``AsyncRunner``, with
each ``--batch-size``. The limit is the model alone over the same 2N prompts: a loop of the
model's own batched ``model.generate`` over chunks of M prompts (tokenized with left padding,
decoded), on a second copy of the same weights, with no library around it.

Variants run round-robin, one run each per round, after one warm-up round. Reported per
variant: the median and fastest of ``--reps`` runs, prompts/s at the median, the map's
throughput as a share of the limit's ("vs limit": medians, target >= 0.95; "paired": the
median of the ratio within each round; "by min": the fastest runs; the last two are steadier
on a shared machine), "model busy" (the median share of a run's wall time spent inside
``model.generate``; the limit's own share is the mark), and the device batches, counted on
the real ``model.generate`` over every run: calls, mean prompts per call and how many held
prompts of both nodes (one value, or the range over the runs). The map's replies must equal
the limit's.

The tiny random Llama of `build_tiny_model` is built in a temporary folder, so the numbers
measure the scheduling and the framework around HF ``generate``, not a real model. Run with
``OMP_NUM_THREADS=1`` on small machines (``--threads`` sets torch's threads). See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET = 0.95


def set_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    torch.set_num_threads(threads)


def texts_of(n: int, seed: int = 0) -> list[str]:
    """n deterministic texts of 4-12 words of the tiny model's vocabulary."""
    import random

    from hypernodes_chain.engines.tiny import WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(n)]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# --------------------------------------------------------------------------- the limit
class RawLoop:
    """The model alone: its own batched generate over chunks of M prompts."""

    def __init__(self, folder: Path, device: str, tokens: int, chunk: int) -> None:
        import transformers

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self.tokenizer.padding_side = "left"
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = [eos] if isinstance(eos, int) else list(eos)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.eos[0]
        self.tokens, self.chunk = tokens, chunk

    def __call__(self, prompts: list[str]) -> list[str]:
        import torch

        out: list[str] = []
        for i in range(0, len(prompts), self.chunk):
            enc = self.tokenizer(prompts[i : i + self.chunk], return_tensors="pt", padding=True)
            enc = enc.to(self.model.device)
            with torch.inference_mode():
                ids = self.model.generate(
                    **enc,
                    max_new_tokens=self.tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.eos,
                )
            new = ids[:, enc["input_ids"].shape[1] :].cpu()
            out += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return out


# --------------------------------------------------------------------------- device batches
class DeviceBatches:
    """Records every real ``model.generate`` call of a model: its prompt rows and duration."""

    def __init__(self, model: Any) -> None:
        self.calls: list[tuple[Any, Any, float]] = []
        real = model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = real(*args, **kwargs)
            seconds = time.perf_counter() - t0
            self.calls.append((kwargs["input_ids"], kwargs["attention_mask"], seconds))
            return out

        model.generate = generate

    def stats(
        self, wall: float, first: set[tuple[int, ...]], second: set[tuple[int, ...]]
    ) -> dict[str, Any]:
        """Calls, mean prompts per call, calls holding prompts of both nodes, and the share
        of the wall time the model spent generating."""
        sizes, mixed = [], 0
        for ids, mask, _ in self.calls:
            rows = {tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask)}
            sizes.append(len(ids))
            mixed += bool(rows & first) and bool(rows & second)
        return {
            "calls": len(sizes),
            "mean": statistics.mean(sizes) if sizes else 0,
            "mixed": mixed,
            "busy": sum(c[2] for c in self.calls) / wall,
        }


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=256, help="items (each asks two nodes)")
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of every reply")
    parser.add_argument("--max-batch-size", type=int, default=64, help="engine's max_batch_size")
    parser.add_argument("--batch-size", default="32,64", help="the map's batch_size(s), a,b")
    parser.add_argument("--reps", type=int, default=9, help="timed runs per variant (>= 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--runners", default="sync,async", help="sync,async")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--batch-wait", type=float, default=None, help="engine's batch_wait (default: its own)"
    )
    args = parser.parse_args(argv)
    set_threads(args.threads)

    import torch

    from hypernodes_chain import AsyncRunner, Graph, Runner
    from hypernodes_chain.engines import TransformersEngine
    from hypernodes_chain.engines.tiny import build_tiny_model
    from hypernodes_chain.llm import llm_node

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: CUDA is not available here", file=sys.stderr)
        return 2
    tokens, m = args.tokens, args.max_batch_size

    @llm_node(engine="m", output_name="first", max_tokens=tokens, cache=False)
    def first(text: str) -> str:
        return f"summarize: {text}"

    @llm_node(engine="m", output_name="second", max_tokens=tokens, cache=False)
    def second(text: str) -> str:
        return f"label: {text}"

    graph = Graph(nodes=[first, second])
    texts = texts_of(args.n)
    batches = [int(b) for b in args.batch_size.split(",")]
    kinds = args.runners.split(",")

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_model(Path(tmp) / "tiny")
        raw = RawLoop(folder, args.device, tokens, m)
        options = {} if args.batch_wait is None else {"batch_wait": args.batch_wait}
        engine = TransformersEngine(folder, device=args.device, max_batch_size=m, **options)
        args.batch_wait = engine.batch_wait
        engine.start()  # outside every timed region
        device = {"raw": DeviceBatches(raw.model), "map": DeviceBatches(engine._model)}
        ids_a = {tuple(engine._encode(f"summarize: {t}")) for t in texts}
        ids_b = {tuple(engine._encode(f"label: {t}")) for t in texts}
        runners = {
            "sync": Runner(engines={"m": engine}),
            "async": AsyncRunner(engines={"m": engine}),
        }

        def run_map(kind: str, batch: int, items: list[str]) -> list[Any]:
            out = runners[kind].map(graph, {"text": items}, map_over="text", batch_size=batch)
            rows = asyncio.run(out) if asyncio.iscoroutine(out) else out
            return [r["first"] for r in rows] + [r["second"] for r in rows]

        def run_raw(items: list[str]) -> list[Any]:
            return raw([f"summarize: {t}" for t in items] + [f"label: {t}" for t in items])

        variants: dict[tuple[str, int], Callable[[list[str]], list[Any]]] = {("raw", m): run_raw}
        for batch in batches:
            for kind in kinds:
                variants[kind, batch] = lambda items, k=kind, b=batch: run_map(k, b, items)

        for fn in variants.values():  # warm-up round
            fn(texts[: 2 * m])
        times: dict[tuple[str, int], list[float]] = {key: [] for key in variants}
        stats: dict[tuple[str, int], list[dict[str, Any]]] = {key: [] for key in variants}
        agree: dict[tuple[str, int], bool] = {}
        expected: list[Any] = []
        for _ in range(args.reps):  # round-robin: every variant sees the same machine state
            for key, fn in variants.items():
                recorder = device["raw" if key[0] == "raw" else "map"]
                recorder.calls.clear()
                seconds, out = timed(lambda fn=fn: fn(texts))
                times[key].append(seconds)
                stats[key].append(recorder.stats(seconds, ids_a, ids_b))
                if key[0] == "raw":
                    expected = out
                else:
                    agree[key] = out == expected
        engine.stop()

    report(args, times, stats, agree)
    return 0


def report(
    args: argparse.Namespace,
    times: dict[tuple[str, int], list[float]],
    stats: dict[tuple[str, int], list[dict[str, Any]]],
    agree: dict[tuple[str, int], bool],
) -> None:
    import torch
    import transformers

    m, n_prompts = args.max_batch_size, 2 * args.n
    limit = statistics.median(times["raw", m])
    print(
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {platform.machine()}, nproc {os.cpu_count()}, "
        f"load {os.getloadavg()[0]:.2f}, torch threads {torch.get_num_threads()}, "
        f"device {args.device}"
    )
    print(
        f"tiny random Llama; {args.n} items x 2 LLM nodes = {n_prompts} prompts, "
        f"max_tokens={args.tokens}, greedy, no cache; engine max_batch_size={m}, "
        f"batch_wait={args.batch_wait}; {args.reps} runs each, round-robin\n"
    )
    print("| variant | map batch_size | median s | min s | prompts/s | vs limit | paired "
          "| by min | model busy | device calls | mean prompts/call | calls with both nodes "
          "| replies = limit |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    names = {
        "raw": f"raw loop: `model.generate` over chunks of {m} (limit)",
        "sync": "`Runner().map`, two `@llm_node`s on one engine",
        "async": "`AsyncRunner().map`, two `@llm_node`s on one engine",
    }
    verdicts = []
    for (kind, batch), runs in times.items():
        median = statistics.median(runs)
        ratio = limit / median
        paired = statistics.median(r / t for r, t in zip(times["raw", m], runs))
        by_min = min(times["raw", m]) / min(runs)
        s = stats[kind, batch]
        busy = statistics.median(x["busy"] for x in s)
        device = " | ".join(
            _span([x[k] for x in s], fmt) for k, fmt in (("calls", "d"), ("mean", ".1f"))
        )
        mixed = "-" if kind == "raw" else _span([x["mixed"] for x in s], "d")
        same = "-" if kind == "raw" else ("yes" if agree[kind, batch] else "NO")
        print(
            f"| {names[kind]} | {'-' if kind == 'raw' else batch} | {median:.3f} | "
            f"{min(runs):.3f} | {n_prompts / median:.0f} | {ratio:.3f} | {paired:.3f} | "
            f"{by_min:.3f} | {busy:.0%} | {device} | {mixed} | {same} |"
        )
        if kind != "raw":
            verdict = "PASS" if ratio >= TARGET else "FAIL"
            verdicts.append(f"{kind} b={batch}: {ratio:.3f} {verdict}")
    print(f"\ntarget: map throughput (vs limit) >= {TARGET} -> " + "; ".join(verdicts))


def _span(values: list[Any], fmt: str) -> str:
    """One value, or the range over the runs."""
    low, high = min(values), max(values)
    return f"{low:{fmt}}" if low == high else f"{low:{fmt}}-{high:{fmt}}"


if __name__ == "__main__":
    raise SystemExit(main())
