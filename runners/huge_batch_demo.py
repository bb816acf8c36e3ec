"""Huge batch demo: a chain of cheap nodes over generated reviews, streamed to parquet shards.

    python runners/huge_batch_demo.py                      # 20,000 rows, a few seconds
    python runners/huge_batch_demo.py --rows 1000000       # the full run
    python runners/huge_batch_demo.py --rows 1000000 --resume   # after a crash or Ctrl-C

The graph (``graph`` below) reads two inputs per item, ``text`` and ``stars``:

    clean(text) -> cleaned               lower case, punctuation dropped, spaces collapsed
    features(cleaned) -> features        a dict, flattened into features.n_words, ... columns
    score(features, stars) -> score      a float in [-1, 1]
    label(score) -> label                "positive" / "neutral" / "negative"

Rows are generated lazily and deterministically (row ``i`` is the same on every run), so
memory stays at one batch plus one shard whatever ``--rows`` is, and ``--resume`` continues an
interrupted run: on Ctrl-C the demo says how many rows its folder holds and the command that
resumes it (exit status 130). The same graph runs through the command line over a file of records::

    hypernodes-chain run runners/huge_batch_demo.py:graph runners/sample_data/reviews.jsonl out/cli
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from hypernodes_chain import Graph, Runner, node
from hypernodes_chain.io import StreamWriter
from hypernodes_chain.programs import finished, interrupted, say

POSITIVE = frozenset({"great", "love", "excellent", "fast", "perfect", "happy", "recommend"})
NEGATIVE = frozenset({"broken", "slow", "bad", "refund", "poor", "late", "disappointed"})
_DROP = str.maketrans({c: " " for c in "!?.,;:()[]\"'#*-/"})


@node(output_name="cleaned")
def clean(text: str) -> str:
    """Lower case, punctuation dropped, runs of spaces collapsed."""
    return " ".join(text.lower().translate(_DROP).split())


@node(output_name="features")
def features(cleaned: str) -> dict[str, int]:
    """Cheap counts; the writer flattens the dict into ``features.<key>`` columns."""
    words = cleaned.split()
    return {
        "n_words": len(words),
        "n_chars": len(cleaned),
        "n_positive": sum(w in POSITIVE for w in words),
        "n_negative": sum(w in NEGATIVE for w in words),
    }


@node(output_name="score")
def score(features: dict[str, int], stars: int) -> float:
    """Half the star rating, half the words: a value in [-1, 1]."""
    hits = features["n_positive"] - features["n_negative"]
    words = max(1, features["n_positive"] + features["n_negative"])
    return round(0.5 * (stars - 3) / 2 + 0.5 * hits / words, 4)


@node(output_name="label")
def label(score: float) -> str:
    return "positive" if score > 0.2 else "negative" if score < -0.2 else "neutral"


graph = Graph(nodes=[clean, features, score, label], name="huge_batch_demo")


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
_CLOSERS = ("", " 5/5", " Thanks!", " #order-{i}", " (verified purchase)", "  ")


def review_text(i: int) -> str:
    """Row ``i``'s review: the same on every run, varied by cheap integer hashing."""
    h = (i * 2654435761) & 0xFFFFFFFF
    text = f"  {_OPENERS[h % 8]} {_BODIES[(h >> 3) % 8]}.{_CLOSERS[(h >> 6) % 6]}"
    return text.replace("{i}", str(i))


def review_stars(i: int) -> int:
    return 1 + ((i * 2246822519) & 0xFFFFFFFF) % 5


class Generated:
    """``rows`` values ``make(0) .. make(rows - 1)``, made lazily, with a ``len()``."""

    def __init__(self, rows: int, make: object) -> None:
        self.rows, self.make = rows, make

    def __len__(self) -> int:
        return self.rows

    def __iter__(self) -> Iterator[object]:
        return map(self.make, range(self.rows))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- main job
def _progress() -> list[object]:
    try:
        from hypernodes_chain.progress import ProgressCallback
    except ImportError:  # the display is optional: the run is the same without it
        return []
    return [ProgressCallback()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="Map a chain of cheap nodes over generated rows.")
    parser.add_argument("--rows", type=int, default=20_000, help="rows to generate (20,000)")
    parser.add_argument("--out", default="out/huge_batch_demo", help="output folder")
    parser.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    parser.add_argument(
        "--max-lines-per-file",
        type=int,
        default=None,
        help="rows per shard (default: about a tenth of --rows, 1,000 to 100,000)",
    )
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument(
        "--resume", action="store_true", help="continue --out, skipping the rows it holds"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    args = parser.parse_args(argv)
    if args.rows < 0:
        parser.error("--rows must be >= 0")
    out = Path(args.out)
    writer = None
    try:
        if out.exists() and not args.resume:
            if not any((out / n).is_file() for n in ("_manifest.json", "manifest.json")):
                if any(out.iterdir()):
                    say(f"error: {out} exists and is not a demo output folder", file=sys.stderr)
                    return 2
            else:  # the demo's own earlier output: generated data, so start it afresh
                say(f"replacing the earlier run in {out}/ (--resume continues it instead)")
                shutil.rmtree(out)
        shard = args.max_lines_per_file or min(100_000, max(1_000, args.rows // 10))
        writer = StreamWriter(out, format=args.format, max_lines_per_file=shard,
                              resume=args.resume)  # fmt: skip
        return _run(args, writer)
    except KeyboardInterrupt:  # the committed shards are kept: --resume continues from them
        return interrupted(out, "rows", args.rows, writer, __file__, argv)


def _run(args: argparse.Namespace, writer: StreamWriter) -> int:
    runner = Runner(callbacks=[] if args.quiet else _progress())
    rows = {"text": Generated(args.rows, review_text), "stars": Generated(args.rows, review_stars)}
    result = runner.map(
        graph,
        inputs=rows,
        map_over=["text", "stars"],
        batch_size=args.batch_size,
        writer=writer,
        on_error="collect",
    )
    # the run's counts; its rates and times are the progress summary's (or, --quiet, here)
    finished(result, Path(args.out), "rows", args.format, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
