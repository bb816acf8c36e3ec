"""TransformersEngine: a local Hugging Face causal LM, batched on the device.

The engine schedules its own requests: one scheduler thread per started engine
(`_scheduler.BatchScheduler`) forms each ``model.generate`` call from whatever prompts wait,
up to ``max_batch_size``, whoever sent them (threads, event loops, several LLM nodes sharing
the engine), so the model never idles while work waits. Prompts share a device batch only
when their schema and sampling agree (the group key); the oldest waiting group goes first.
`generate` encodes its prompts (sorted by length, so a big call pads little), queues them and
waits; `agenerate` awaits the same future without holding a thread. Each device batch is
left padded; replies come back in input order.
``schema`` (a JSON schema dict) is enforced by xgrammar's grammar-constrained decoding: a
token bitmask per row and step, so even a tiny random model returns schema-valid JSON, and a
row whose grammar is complete can only emit EOS. Strings the schema leaves unbounded get a
``maxLength`` that lets the reply close within ``max_tokens`` (`_string_budget.fit_strings`).

torch, transformers and xgrammar are imported when the engine starts, never at import time
(install them with the ``local`` extra). The engine leaves ``torch.set_num_threads`` to the
user: on small machines (2 cores) set ``OMP_NUM_THREADS=1`` (or call
``torch.set_num_threads(1)``) when other work shares the cores, as CPU thread oversubscription
makes torch many times slower.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import re
import threading
import weakref
from collections.abc import AsyncIterator, Generator, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._optional import optional
from ..exceptions import EngineError, TruncatedReplyError
from ._revision import FolderRevision, folder_revision
from ._scheduler import BatchScheduler
from ._string_budget import fit_strings
from ._threaded import stream_in_thread
from .base import Prompt, Reply, Sampling, chat_messages

__all__ = ["TransformersEngine"]

_CONTROL = re.compile("[\x00-\x1f]")


def _lib(name: str) -> Any:
    return optional(name, "TransformersEngine", "local")


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """The text before the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def _escape_controls(text: str) -> str:
    """Escape raw control characters as JSON ``\\u00XX`` escapes (same decoded value).

    xgrammar 0.2.x lets a string with ``minLength``/``maxLength`` hold raw control
    characters (mlc-ai/xgrammar#800, open), which strict JSON parsers reject; with compact
    separators (no whitespace between tokens) such a character can only sit inside a string,
    so escaping it is exact.
    """
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class _GrammarProcessor:
    """An HF logits processor: one xgrammar matcher per row masks the logits to the tokens
    the JSON schema allows; with sampling it then applies temperature / top-k / top-p itself
    (after the mask, so a filter can never leave a row without an allowed token)."""

    def __init__(
        self,
        xgr: Any,
        compiled: Any,
        batch: int,
        prompt_width: int,
        vocab_size: int,
        eos_ids: Sequence[int],
        warpers: Sequence[Any],
    ) -> None:
        self._xgr = xgr
        self.matchers = [xgr.GrammarMatcher(compiled) for _ in range(batch)]
        self.consumed = [0] * batch  # generated tokens each matcher has seen
        self.dead = [False] * batch  # a token was rejected (a row HF finished: pads follow)
        self._width = prompt_width
        self._bitmask = xgr.allocate_token_bitmask(batch, vocab_size)
        words = [0] * self._bitmask.shape[1]
        for token in eos_ids:
            words[token // 32] |= 1 << (token % 32)
        signed = [w - (1 << 32) if w >= 1 << 31 else w for w in words]
        self._eos_only = _lib("torch").tensor(signed, dtype=self._bitmask.dtype)
        self._warpers = list(warpers)

    def _live(self, row: int) -> bool:
        return not self.dead[row] and not self.matchers[row].is_terminated()

    def catch_up(self, new_tokens: Any) -> None:
        """Feed each live matcher the generated tokens it has not seen yet."""
        total = int(new_tokens.shape[1])
        live = [r for r in range(len(self.matchers)) if self._live(r)]
        if not live or total == 0:
            return
        low = min(self.consumed[r] for r in live)
        if low >= total:
            return
        columns = new_tokens[:, low:].tolist()
        for row in live:
            for token in columns[row][self.consumed[row] - low :]:
                self.consumed[row] += 1
                if not self.matchers[row].accept_token(int(token)):
                    self.dead[row] = True
                    break
                if self.matchers[row].is_terminated():
                    break

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.catch_up(input_ids[:, self._width :])
        for row, matcher in enumerate(self.matchers):
            if self.dead[row]:
                self._bitmask[row] = self._eos_only
            elif matcher.is_terminated():
                self._bitmask[row].fill_(-1)
            else:
                matcher.fill_next_token_bitmask(self._bitmask, row)
        self._xgr.apply_token_bitmask_inplace(
            scores, self._bitmask.to(scores.device, non_blocking=True)
        )
        for warper in self._warpers:
            scores = warper(input_ids, scores)
        return scores

    def complete(self, row: int) -> bool:
        """Whether the row's output so far is a complete document of the grammar."""
        matcher = self.matchers[row]
        return bool(matcher.is_terminated() or matcher.is_completed())


class _Cancel:
    """An HF stopping criterion that ends every row once the event is set."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        torch = _lib("torch")
        return torch.full(
            (input_ids.shape[0],), self._event.is_set(), dtype=torch.bool, device=input_ids.device
        )


@dataclass(frozen=True)
class _Spec:
    """What a device batch needs besides its prompts: the same for every prompt of a group."""

    kwargs: dict[str, Any]
    warpers: list[Any]
    grammar: Any
    stops: list[str]
    max_tokens: int
    seed: int | None


@dataclass(frozen=True)
class _Pending:
    """One `generate` call in the queue: its future, and how to put its replies in order."""

    future: Future[list[Any]]
    size: int
    order: list[int]  # prompt indices in the order they were queued
    failed: dict[int, Exception]  # prompts that could not be encoded

    def replies(self, queued: Sequence[Any]) -> list[str | Exception]:
        out: list[Any] = [None] * self.size
        for i, exc in self.failed.items():
            out[i] = exc
        for i, reply in zip(self.order, queued):
            out[i] = reply
        return out


def _weak_run(engine: TransformersEngine) -> Any:
    """The engine's `_run_batch` for its scheduler thread, holding the engine weakly."""
    method = weakref.WeakMethod(engine._run_batch)

    def run(spec: _Spec, rows: list[list[int]], stopping: threading.Event) -> Any:
        bound = method()
        if bound is None:
            raise EngineError("the engine was garbage collected")
        return bound(spec, rows, stopping)

    return run


class TransformersEngine:
    """A Hugging Face causal LM folder (``AutoModelForCausalLM`` + ``AutoTokenizer``).

    ``device``: a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
    ``dtype``: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` or a ``torch.dtype``;
    None keeps transformers' default. ``max_batch_size``: most prompts per ``model.generate``
    call, formed by the engine from every caller's waiting prompts; it is also the engine's
    ``max_concurrency`` (prompts on the device at once; more wait in its queue).
    ``batch_wait``: seconds a device batch short of ``max_batch_size`` waits for more prompts
    (default 5 ms, small beside a ``model.generate`` call; 0 starts every batch at once).

    Sampling keywords of `generate` / `stream`: ``max_tokens`` (default 256),
    ``temperature`` (0 = greedy), ``top_p``, ``seed`` (makes sampling reproducible for the same
    call: a seeded call's prompts share device batches with no other call), ``stop`` (a string
    or strings: the reply is cut before the first one); any other keyword (``top_k``,
    ``repetition_penalty``, ...) goes to ``model.generate``.
    """

    kind = "transformers"

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str = "cpu",
        dtype: Any = None,
        max_batch_size: int = 64,
        batch_wait: float = 0.005,
        trust_remote_code: bool = False,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not batch_wait >= 0:
            raise ValueError(f"batch_wait must be >= 0 seconds, got {batch_wait}")
        self.model = str(model)
        self.device = str(device)
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.max_concurrency = max_batch_size
        self.batch_wait = batch_wait
        self.trust_remote_code = trust_remote_code
        self._options: dict[str, Any] = {
            "device": device,
            "dtype": dtype,
            "max_batch_size": max_batch_size,
            "batch_wait": batch_wait,
            "trust_remote_code": trust_remote_code,
        }
        # _life guards loading, the scheduler and the queue's entrance (start, stop, submit);
        # _lock is the device: one generation at a time (a scheduled batch or a stream);
        # _text guards the tokenizer, used by callers (encode) and the scheduler (decode).
        # Order: _life before _text, _lock before _text; never _lock then _life.
        self._life = threading.RLock()
        self._lock = threading.Lock()
        self._text = threading.Lock()
        self._scheduler: BatchScheduler | None = None
        self._finalizer: weakref.finalize[Any, Any]
        self._model: Any = None
        self._tokenizer: Any = None
        self._compiler: Any = None
        self._grammars: dict[str, Any] = {}
        self._pad_id = 0
        self._eos_ids: list[int] = []
        self._vocab_size = 0
        self._revision: FolderRevision | None = None

    def __repr__(self) -> str:
        dtype = self._dtype_name()
        return f"TransformersEngine({self.model!r}, device={self.device!r}, dtype={dtype!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its constructor arguments: the process that unpickles it (a Dask
        worker, a Daft UDF process) builds its own engine and starts it on first use; a
        loaded model, the scheduler thread and the locks never travel."""
        return (_rebuild, (type(self), self.model, self._options))

    # ----------------------------------------------------------------- lifecycle

    def _path(self) -> Path:
        path = Path(self.model).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"TransformersEngine needs a local model folder with a config.json, got "
                f"{self.model!r} (download a Hub model first: huggingface_hub.snapshot_download)"
            )
        return path.resolve()

    def _dtype_arg(self) -> Any:
        if self.dtype is None or not isinstance(self.dtype, str) or self.dtype == "auto":
            return self.dtype
        return getattr(_lib("torch"), self.dtype)

    def _dtype_name(self) -> str:
        if self.dtype is None:
            return "default"
        return str(self.dtype).removeprefix("torch.")

    def start(self) -> None:
        """Load the tokenizer and the model onto ``device`` and start the scheduler thread
        (idempotent)."""
        with self._life:
            self._load()
            if self._scheduler is None:
                scheduler = BatchScheduler(
                    repr(self),
                    _weak_run(self),
                    max_batch_size=self.max_batch_size,
                    device=self._lock,
                    batch_wait=self.batch_wait,
                )
                # the thread holds the engine weakly: an engine dropped unstopped is freed,
                # and its thread ends with it
                gone = f"{self!r} was garbage collected with requests waiting"
                self._finalizer = weakref.finalize(self, scheduler.close, lambda: EngineError(gone))
                self._scheduler = scheduler

    def _load(self) -> None:
        if self._model is not None:
            return
        path = self._path()
        transformers = _lib("transformers")
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            path, trust_remote_code=self.trust_remote_code
        )
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.dtype is not None:
            kwargs["dtype"] = self._dtype_arg()
        model = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
        model.to(self.device)
        model.eval()
        eos: set[int] = set()
        for source in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif source is not None:
                eos.update(int(t) for t in source)
        if not eos:
            raise ValueError(f"{self.model}: the tokenizer and the model define no EOS token")
        self._eos_ids = sorted(eos)
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else self._eos_ids[0]
        output = model.get_output_embeddings()
        self._vocab_size = int(output.weight.shape[0]) if output is not None else len(tokenizer)
        self._tokenizer, self._model = tokenizer, model

    def stop(self) -> None:
        """Stop the scheduler and free the model (and the GPU memory it held); idempotent.

        Requests not yet answered (waiting, or on the device: that batch ends at its next
        step) fail with an `EngineError` naming the engine; a later call starts it again.
        A stream in progress finishes first."""
        with self._life:
            scheduler, self._scheduler = self._scheduler, None
            if scheduler is not None:
                self._finalizer.detach()
                scheduler.close(self._stopped)
            with self._lock, self._text:
                if self._model is None:
                    return
                on_cuda = str(self._model.device).startswith("cuda")
                self._model = self._tokenizer = self._compiler = None
                self._grammars.clear()
            gc.collect()
            if on_cuda:
                _lib("torch").cuda.empty_cache()

    def _stopped(self) -> EngineError:
        return EngineError(
            f"{self!r} was stopped before this request was answered "
            "(a later call starts the engine again)"
        )

    def identity(self) -> dict[str, Any]:
        """Engine kind, resolved model folder, revision, dtype and device.

        ``revision`` is ``"sha256:..."`` over the folder's top-level files: by content for
        files up to 64 MiB (config, tokenizer, small weights), by name, size and mtime for
        larger ones (big weight shards), so it is stable across start/stop and changes when
        the weights are rewritten. It never loads the model.
        """
        path = self._path()
        self._revision = folder_revision(path, self._revision)
        return {
            "engine": self.kind,
            "model": str(path),
            "revision": self._revision[1],
            "dtype": self._dtype_name(),
            "device": self.device,
        }

    # ----------------------------------------------------------------- prompts

    def _encode(self, prompt: Prompt) -> list[int]:
        """The token ids of one prompt."""
        return self._ids(*self._text_of(prompt))

    def _encode_all(
        self, prompts: Sequence[Prompt]
    ) -> tuple[dict[int, list[int]], dict[int, Exception]]:
        """The token ids of each prompt by index, and the exception of each prompt that
        cannot be encoded. Prompts go to the tokenizer together (one call per kind: plain
        text, chat template): 64 prompts one by one took 3.7 ms of this process's CPU
        against 1.1 ms at once, time a busy map took from the model."""
        kinds: dict[bool, list[tuple[int, str]]] = {True: [], False: []}
        encoded: dict[int, list[int]] = {}
        failed: dict[int, Exception] = {}
        for i, prompt in enumerate(prompts):
            try:
                text, special = self._text_of(prompt)
            except Exception as exc:
                failed[i] = exc
            else:
                kinds[special].append((i, text))
        for special, items in kinds.items():
            if not items:
                continue
            try:
                rows = self._tokenizer([t for _, t in items], add_special_tokens=special)
                together: list[Any] | None = rows["input_ids"]
            except Exception:  # one text the tokenizer refuses: each alone finds which
                together = None
            for k, (i, text) in enumerate(items):
                try:
                    encoded[i] = (
                        self._nonempty(together[k])
                        if together is not None
                        else self._ids(text, special)
                    )
                except Exception as exc:
                    failed[i] = exc
        return encoded, failed

    def _text_of(self, prompt: Prompt) -> tuple[str, bool]:
        """A prompt's text, and whether the tokenizer adds its special tokens to it (not
        when a chat template wrote them)."""
        if isinstance(prompt, str):
            return prompt, True
        tokenizer = self._tokenizer
        messages = chat_messages(prompt)
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return text, False  # the template writes its own special tokens
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join([*lines, "assistant:"]), True

    def _ids(self, text: str, special: bool) -> list[int]:
        """The token ids of one text."""
        return self._nonempty(self._tokenizer(text, add_special_tokens=special)["input_ids"])

    def _nonempty(self, ids: Sequence[Any]) -> list[int]:
        """Token ids as ints; an empty prompt becomes the BOS token."""
        row = [int(t) for t in ids]
        if not row:
            bos = self._tokenizer.bos_token_id
            if bos is None:
                raise ValueError("empty prompt (and the tokenizer has no BOS token)")
            row = [int(bos)]
        return row

    def _grammar(self, schema: Mapping[str, Any]) -> Any:
        key = json.dumps(schema)  # property order matters: it is the order of the output
        if key not in self._grammars:
            xgr = _lib("xgrammar")
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._eos_ids
                )
                self._compiler = xgr.GrammarCompiler(info)
            self._grammars[key] = self._compiler.compile_json_schema(
                key, any_whitespace=False, strict_mode=True
            )
        return self._grammars[key]

    # ----------------------------------------------------------------- generation

    def _generate_kwargs(
        self,
        *,
        max_tokens: int,
        temperature: float,
        top_p: float,
        constrained: bool,
        extra: dict[str, Any],
    ) -> tuple[dict[str, Any], list[Any]]:
        """``model.generate`` keywords, and the warpers the grammar processor applies itself."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}"
            )
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "pad_token_id": self._pad_id,
            "eos_token_id": self._eos_ids,
        }
        warpers: list[Any] = []
        if temperature == 0:
            kwargs["do_sample"] = False
        else:
            top_k = extra.pop("top_k", 0) or 0
            kwargs["do_sample"] = True
            if constrained:  # filter after the grammar mask (see _GrammarProcessor)
                transformers = _lib("transformers")
                kwargs.update(temperature=1.0, top_p=1.0, top_k=0)
                warpers.append(transformers.TemperatureLogitsWarper(float(temperature)))
                if top_k:
                    warpers.append(transformers.TopKLogitsWarper(int(top_k)))
                if top_p < 1:
                    warpers.append(transformers.TopPLogitsWarper(float(top_p)))
            else:
                kwargs.update(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
        kwargs.update(extra)
        return kwargs, warpers

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        """Seed torch's generators for one call, restoring their state afterwards."""
        if seed is None:
            yield
            return
        torch = _lib("torch")
        device = self._model.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            torch.manual_seed(int(seed))
            yield

    def _decode(self, tokens: Sequence[int]) -> tuple[str, int]:
        """The text of a row's new tokens, and how many were generated (EOS included)."""
        eos = set(self._eos_ids)
        kept: list[int] = []
        for token in tokens:
            if token in eos:
                text = str(self._tokenizer.decode(kept, skip_special_tokens=True))
                return text, len(kept) + 1
            kept.append(token)
        return str(self._tokenizer.decode(kept, skip_special_tokens=True)), len(kept)

    def _run_batch(
        self, spec: _Spec, rows: list[list[int]], stopping: threading.Event
    ) -> list[str | Exception]:
        """One ``model.generate`` call (the scheduler thread, holding the device)."""
        torch = _lib("torch")
        width = max(len(r) for r in rows)
        pad = self._pad_id
        # left padding, built as lists and turned into tensors at once (filling a tensor row
        # by row took ~10 µs a row alone, several times that in a busy map, device idle)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        call = dict(spec.kwargs, stopping_criteria=[_Cancel(stopping)])
        processor = None
        if spec.grammar is not None:  # this group's grammar: groups never share a batch
            processor = _GrammarProcessor(
                _lib("xgrammar"),
                spec.grammar,
                len(rows),
                width,
                self._vocab_size,
                self._eos_ids,
                spec.warpers,
            )
            call["logits_processor"] = [processor]
        if spec.stops:
            call.update(stop_strings=list(spec.stops), tokenizer=self._tokenizer)
        device = self._model.device
        with self._seeded(spec.seed), torch.inference_mode():
            out = self._model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), **call
            )
        new = out[:, width:].cpu()
        if processor is not None:
            processor.catch_up(new)
        with self._text:
            return [
                self._reply(tokens, len(rows[i]), i, processor, spec)
                for i, tokens in enumerate(new.tolist())
            ]

    def _reply(
        self,
        tokens: list[int],
        prompt_tokens: int,
        row: int,
        processor: _GrammarProcessor | None,
        spec: _Spec,
    ) -> str | Exception:
        """One row's reply with its token counts, or its exception (that prompt's only)."""
        try:
            text, generated = self._decode(tokens)
            text, stopped = _cut_at_stop(text, spec.stops)
            if processor is not None:
                if not stopped and not processor.complete(row):
                    if processor.consumed[row] >= spec.max_tokens and not processor.dead[row]:
                        return TruncatedReplyError(spec.max_tokens, _escape_controls(text))
                    return ValueError("generation ended before the schema was complete")
                text = _escape_controls(text)
            return Reply(text, prompt_tokens=prompt_tokens, completion_tokens=generated)
        except Exception as exc:
            return exc

    def _submit(
        self,
        prompts: Sequence[Prompt],
        schema: Mapping[str, Any] | None,
        sampling: dict[str, Any],
        *,
        blocking: bool = True,
    ) -> _Pending | None:
        """Encode the prompts and queue them under their group key (starting the engine if
        needed). Not ``blocking``: None where that would wait (a load, a schema's first
        compilation, another caller's encoding, a stop), so an event loop never blocks."""
        if schema is not None:  # its open strings get a share of max_tokens, to close in time
            schema = fit_strings(schema, Sampling.of(sampling).max_tokens)
        if not self._life.acquire(blocking=blocking):
            return None
        try:
            if not blocking and (
                self._scheduler is None
                or (schema is not None and json.dumps(schema) not in self._grammars)
            ):
                return None
            self.start()
            assert self._scheduler is not None
            key, spec = self._group(schema, **sampling)
            with self._text:
                encoded, failed = self._encode_all(prompts)
            order = sorted(encoded, key=lambda i: len(encoded[i]))  # a big call pads little
            future = self._scheduler.submit(key, spec, [encoded[i] for i in order])
            return _Pending(future, len(prompts), order, failed)
        finally:
            self._life.release()

    def _group(self, schema: Mapping[str, Any] | None, **sampling: Any) -> tuple[Hashable, _Spec]:
        """The group key of a call (what prompts sharing a device batch must agree on) and
        its spec; bad sampling arguments raise here, failing the whole call."""
        params = Sampling.of(sampling)
        max_tokens, temperature, top_p, seed = (
            params.max_tokens, params.temperature, params.top_p, params.seed
        )  # fmt: skip
        extra = dict(params.extra)
        stops = list(params.stop)
        kwargs, warpers = self._generate_kwargs(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            constrained=schema is not None,
            extra=dict(extra),
        )
        with self._text:
            grammar = self._grammar(schema) if schema is not None else None
        schema_key = json.dumps(schema) if schema is not None else None
        # a seeded call is reproducible only in batches of its own prompts
        alone = object() if seed is not None else None
        key = (
            schema_key,
            max_tokens,
            float(temperature),
            float(top_p),
            tuple(stops),
            repr(sorted(extra.items())),
            alone,
        )
        return key, _Spec(kwargs, warpers, grammar, stops, max_tokens, seed)

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        schema: Mapping[str, Any] | None = None,
        **sampling: Any,
    ) -> list[str | Exception]:
        """One reply per prompt, in order; a prompt that fails (it cannot be encoded, or its
        reply ran out of ``max_tokens`` before ``schema`` was complete) gets its exception,
        and so do the prompts of a device call that fails. The prompts join the engine's
        queue and may share device batches with other callers' prompts of the same group.
        Starts the engine if needed. Sampling keywords: see the class."""
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts, not one str")
        pending = self._submit(list(prompts), schema, sampling)
        assert pending is not None
        return pending.replies(pending.future.result())

    async def agenerate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        """The async twin of `generate`: the prompts join the same queue and the reply is
        awaited, holding no thread (a worker thread only loads the engine or compiles a new
        schema). Cancelling the call drops its prompts that still wait."""
        if isinstance(prompts, str):
            raise TypeError("agenerate takes a list of prompts, not one str")
        prompts = list(prompts)
        pending = self._submit(prompts, schema, sampling, blocking=False)
        if pending is None:
            pending = await asyncio.to_thread(self._submit, prompts, schema, sampling)
            assert pending is not None
        queued: list[Any] = await asyncio.wrap_future(pending.future)
        return pending.replies(queued)

    # ----------------------------------------------------------------- streaming

    def stream(self, prompt: Prompt, **sampling: Any) -> Iterator[str]:
        """The text chunks of one reply as the model writes them (``TextIteratorStreamer``,
        generation in a thread); takes `generate`'s keywords, ``schema`` included."""
        return self._stream(prompt, threading.Event(), **sampling)

    def _stream(
        self,
        prompt: Prompt,
        cancel: threading.Event,
        *,
        schema: Mapping[str, Any] | None = None,
        **sampling: Any,
    ) -> Generator[str, None, None]:
        params = Sampling.of(sampling)
        max_tokens, temperature, top_p, seed = (
            params.max_tokens, params.temperature, params.top_p, params.seed
        )  # fmt: skip
        stops = list(params.stop)
        hold = max((len(s) for s in stops), default=1) - 1  # a stop may begin in the tail
        if schema is not None:
            schema = fit_strings(schema, max_tokens)
        self.start()
        with self._lock:  # the device: no scheduled batch runs meanwhile
            if self._model is None:
                raise self._stopped()
            torch, transformers = _lib("torch"), _lib("transformers")
            kwargs, warpers = self._generate_kwargs(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                constrained=schema is not None,
                extra=dict(params.extra),
            )
            with self._text:
                row = self._encode(prompt)
                grammar = self._grammar(schema) if schema is not None else None
            processor = None
            if schema is not None:
                processor = _GrammarProcessor(
                    _lib("xgrammar"),
                    grammar,
                    1,
                    len(row),
                    self._vocab_size,
                    self._eos_ids,
                    warpers,
                )
                kwargs["logits_processor"] = [processor]
            streamer = transformers.TextIteratorStreamer(
                self._tokenizer, skip_prompt=True, skip_special_tokens=True
            )
            device = self._model.device
            kwargs.update(
                input_ids=torch.tensor([row], dtype=torch.long, device=device),
                attention_mask=torch.ones((1, len(row)), dtype=torch.long, device=device),
                streamer=streamer,
                stopping_criteria=[_Cancel(cancel)],
            )
            errors: list[BaseException] = []
            outputs: list[Any] = []

            def work() -> None:
                try:
                    with self._seeded(seed), torch.inference_mode():
                        outputs.append(self._model.generate(**kwargs))
                except BaseException as exc:
                    errors.append(exc)
                    streamer.end()

            thread = threading.Thread(target=work, name="TransformersEngine.stream", daemon=True)
            thread.start()
            emit = _escape_controls if schema is not None else str
            text, sent, stopped, closed = "", 0, False, False
            try:
                for chunk in streamer:
                    text += chunk
                    cut, stopped = _cut_at_stop(text[max(0, sent - hold) :], stops)
                    if stopped:
                        end = max(0, sent - hold) + len(cut)
                        if end > sent:
                            yield emit(text[sent:end])
                        cancel.set()
                        break
                    safe = max(sent, len(text) - hold)
                    if safe > sent:
                        yield emit(text[sent:safe])
                        sent = safe
                closed = cancel.is_set() and not stopped  # astream's consumer went away
                if not stopped and len(text) > sent:
                    yield emit(text[sent:])
            finally:
                cancel.set()
                thread.join()
            if errors:
                raise errors[0]
            if processor is not None and not stopped and not closed:
                processor.catch_up(outputs[0][:, len(row) :].cpu())
                if not processor.complete(0):
                    if processor.consumed[0] >= max_tokens and not processor.dead[0]:
                        raise TruncatedReplyError(max_tokens, _escape_controls(text))
                    raise ValueError("generation ended before the schema was complete")

    async def astream(self, prompt: Prompt, **sampling: Any) -> AsyncIterator[str]:
        """The async twin of `stream`: generation runs in a worker thread; closing the
        iterator early stops it."""
        chunks = stream_in_thread(lambda cancel: self._stream(prompt, cancel, **sampling))
        async with contextlib.aclosing(chunks):  # closed early: the generation stops now
            async for chunk in chunks:
                yield chunk


def _rebuild(
    cls: type[TransformersEngine], model: str, options: dict[str, Any]
) -> TransformersEngine:
    return cls(model, **options)
