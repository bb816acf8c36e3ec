"""LLM reviews: a structured summary of every review by a local model, streamed to parquet.

    python runners/llm_reviews.py                          # 2,000 reviews, a tiny model built now
    python runners/llm_reviews.py --model /models/qwen2.5-0.5b-instruct --rows 50000
    python runners/llm_reviews.py --resume                 # after a crash or Ctrl-C
    python runners/llm_reviews.py --engine ollama:llama3.2  # any engine spec, see below

The graph (``graph`` below) reads ``text`` and ``stars`` per review:

    clean(text) -> cleaned                     lower case, punctuation dropped
    summarize(cleaned, stars) -> summary       an LLM node: a validated `Summary` (pydantic)
    agrees(summary, stars) -> agrees           does the model's sentiment match the stars?

``summarize`` builds the chat prompt of ONE review; the runner sends the prompts of a whole
batch to the engine in one ``generate`` call, with the JSON schema of `Summary` for
constrained decoding, so every reply is valid JSON even from a model with random weights. The
writer flattens the summary into ``summary.title``, ``summary.sentiment``, ``summary.stars``.
Without ``--model`` the job builds a tiny random Llama on the spot (no download, no server):
its titles are placeholder text, but the pipeline, batching, validation and files are real.

On Ctrl-C the job says how many reviews its folder holds and the command that resumes it
(exit status 130). Hugging Face progress bars are off: the job's own display says what
happens.

``--engine SPEC`` answers with another engine instead (`engine_from_spec`):
``ollama:llama3.2`` (or ``ollama:NAME@http://host:11434``), ``vllm:/models/qwen`` (offline, in
this process; ``vllm+server:`` for a ``vllm serve`` subprocess), ``transformers:/models/tiny``
(``--device`` and ``--batch-size`` apply) or ``openai:http://127.0.0.1:8000/v1@MODEL``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from hypernodes_chain import Graph, Runner, node
from hypernodes_chain.io import StreamWriter
from hypernodes_chain.llm import llm_node
from hypernodes_chain.programs import finished, interrupted, printable, say

_DROP = str.maketrans({c: " " for c in "!?.,;:()[]\"'#*-/"})


class Summary(BaseModel):
    title: str = Field(max_length=24, description="a short title for the review")
    sentiment: Literal["positive", "negative", "neutral"]
    stars: int = Field(ge=1, le=5, description="the stars the reviewer probably gave")


@node(output_name="cleaned")
def clean(text: str) -> str:
    """Lower case, punctuation dropped, runs of spaces collapsed."""
    return " ".join(text.lower().translate(_DROP).split())


@llm_node(engine="local", output_name="summary", output_model=Summary, max_tokens=96,
          system="You summarize product reviews as JSON.")  # fmt: skip
def summarize(cleaned: str, stars: int) -> str:
    return f"Review ({stars} stars): {cleaned}\nGive a title, the sentiment and the stars."


@node(output_name="agrees")
def agrees(summary: Summary, stars: int) -> bool:
    """Whether the model's sentiment agrees with the star rating."""
    expected = "positive" if stars >= 4 else "negative" if stars <= 2 else "neutral"
    return summary.sentiment == expected


graph = Graph(nodes=[clean, summarize, agrees], name="llm_reviews")


# --------------------------------------------------------------------------- generated rows
_OPENERS = ("Great", "Bad", "OK", "Love it!", "Meh.", "Excellent!!", "Broken", "So slow...")
_BODIES = (
    "fast delivery and the box was perfect",
    "arrived late, the handle is broken",
    "would recommend to a friend",
    "poor quality, I want a refund",
    "does what it says",
    "happy with it, excellent value",
    "disappointed: slow and bad support",
    "perfect size, love the colour",
)


class Reviews:
    """``rows`` generated reviews, the same on every run, made lazily, with a ``len()``."""

    def __init__(self, rows: int, field: str) -> None:
        self.rows, self.field = rows, field

    def __len__(self) -> int:
        return self.rows

    def __iter__(self) -> Iterator[object]:
        for i in range(self.rows):
            h = (i * 2654435761) & 0xFFFFFFFF
            if self.field == "text":
                yield f"{_OPENERS[h % 8]} {_BODIES[(h >> 3) % 8]}."
            else:
                yield 1 + ((i * 2246822519) & 0xFFFFFFFF) % 5


# --------------------------------------------------------------------------- main job
def _is_local(args: argparse.Namespace) -> bool:
    """Whether torch runs in this process (the tiny model, --model or a transformers: spec)."""
    return args.engine is None or args.engine.strip().startswith("transformers:")


def _spec_engine(args: argparse.Namespace) -> object:
    """The engine of ``--engine SPEC``; built, not started (a bad spec is a ValueError)."""
    from hypernodes_chain.engines import engine_from_spec

    local = _is_local(args)
    options = {"device": args.device, "max_batch_size": args.batch_size} if local else {}
    return engine_from_spec(args.engine, **options)


def _engine(args: argparse.Namespace) -> object:
    from hypernodes_chain.engines import TransformersEngine

    model = args.model
    if model is None:
        model = Path(args.out).parent / ".llm_reviews_tiny_model"
        built = "built just now" if _tiny_model(model) else "built by an earlier run"
        say(f"no --model: a tiny random Llama ({built}, {model}/); its titles are "
            "placeholder text. --model PATH takes a Hugging Face model folder.")  # fmt: skip
    return TransformersEngine(model, device=args.device, max_batch_size=args.batch_size)


def _tiny_model(folder: Path) -> bool:
    """Build the tiny model into ``folder`` unless it is there; True when built now
    (`build_tiny_model` renames a finished model into place: a Ctrl-C leaves none half
    written)."""
    from hypernodes_chain.engines import build_tiny_model

    if (folder / "config.json").is_file():
        return False
    build_tiny_model(folder)
    return True


def _quiet_hugging_face() -> None:
    """No Hugging Face progress bars (model loading, saving): they would break into the
    progress display and leave carriage returns in a piped log."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:  # imported before us (a test, a notebook)
        hf_logging.disable_progress_bar()


def _sample(files: list[Path], n: int = 3) -> list[str]:
    """A few stored rows, for a look at what the model wrote (titles escaped)."""
    import pyarrow.parquet as pq

    if not files:
        return []
    table = pq.read_table(files[0]).slice(0, n).to_pylist()
    keys = ("_index", "summary.sentiment", "summary.stars", "summary.title")
    return [f"  #{r[keys[0]]}: {r[keys[1]]}, {r[keys[2]]} stars, title {printable(r[keys[3]])}"
            for r in table if all(k in r for k in keys)]  # fmt: skip


def _progress(quiet: bool) -> list[object]:
    if quiet:
        return []
    from hypernodes_chain.progress import ProgressCallback

    return [ProgressCallback()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="Summarize reviews with a local LLM.")
    parser.add_argument("--rows", type=int, default=2_000, help="reviews to generate (2,000)")
    parser.add_argument("--model", type=Path, default=None, help="a Hugging Face model folder")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument(
        "--engine",
        metavar="SPEC",
        help="an engine spec instead of --model: ollama:NAME[@HOST], vllm:MODEL, "
        "vllm+server:MODEL, transformers:PATH or openai:URL@MODEL",
    )
    parser.add_argument("--out", default="out/llm_reviews", help="output folder")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per generate call")
    parser.add_argument("--max-lines-per-file", type=int, default=1_000)
    parser.add_argument("--resume", action="store_true", help="continue --out")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    args = parser.parse_args(argv)
    out = Path(args.out)
    writer = None
    try:
        _quiet_hugging_face()
        engine = None
        if args.engine is not None:
            if args.model is not None:
                parser.error("give --model or --engine, not both")
            try:
                engine = _spec_engine(args)
            except ValueError as exc:
                parser.error(f"--engine: {exc}")
            say(f"engine: {engine!r}")
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-core machines: no OpenMP busy-waiting
        if out.exists() and not args.resume:
            if not (out / "_manifest.json").is_file() and any(out.iterdir()):
                say(f"error: {out} exists and is not an output folder of this job", file=sys.stderr)
                return 2
            shutil.rmtree(out)
        if engine is None:
            engine = _engine(args)
        if _is_local(args) and args.device == "cpu":  # torch in this process: one thread
            import torch

            torch.set_num_threads(1)
        writer = StreamWriter(out, format="parquet", max_lines_per_file=args.max_lines_per_file,
                              resume=args.resume)  # fmt: skip
        return _run(args, engine, writer)
    except KeyboardInterrupt:
        return interrupted(out, "reviews", args.rows, writer, __file__, argv)


def _run(args: argparse.Namespace, engine: object, writer: StreamWriter) -> int:
    inputs = {"text": Reviews(args.rows, "text"), "stars": Reviews(args.rows, "stars")}
    callbacks = _progress(args.quiet)
    try:
        result = Runner(engines={"local": engine}, callbacks=callbacks).map(
            graph, inputs, map_over=["text", "stars"], batch_size=args.batch_size,
            writer=writer, on_error="collect",
        )  # fmt: skip
    finally:
        for callback in callbacks:
            close = getattr(callback, "close", None)
            if close is not None:
                close()
    # the run's counts; its rates and times are the progress summary's (or, --quiet, here)
    finished(result, Path(args.out), "reviews", "parquet", quiet=args.quiet)
    if result.n_ok:
        print("\n".join(_sample(result.files)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
