"""TransformersEngine: a local Hugging Face causal LM, batched on the device.

Prompts of one `generate` call are encoded, sorted by length, left padded and sent to
``model.generate`` in sub-batches of ``max_batch_size``; replies come back in input order.
``schema`` (a JSON schema dict) is enforced by xgrammar's grammar-constrained decoding: a
token bitmask per row and step, so even a tiny random model returns schema-valid JSON, and a
row whose grammar is complete can only emit EOS.

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
from collections.abc import AsyncIterator, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._optional import optional
from ._revision import FolderRevision, folder_revision
from ._threaded import stream_in_thread
from .base import Prompt, chat_messages

__all__ = ["TransformersEngine"]

DEFAULT_MAX_TOKENS = 256
_CONTROL = re.compile("[\x00-\x1f]")


def _lib(name: str) -> Any:
    return optional(name, "TransformersEngine", "local")


def _stop_list(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"stop must be non-empty strings, got {stop!r}")
    return stops


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


def _truncated(max_tokens: int) -> ValueError:
    return ValueError(f"reply truncated at max_tokens={max_tokens} before the schema was complete")


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


class TransformersEngine:
    """A Hugging Face causal LM folder (``AutoModelForCausalLM`` + ``AutoTokenizer``).

    ``device``: a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
    ``dtype``: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` or a ``torch.dtype``;
    None keeps transformers' default. ``max_batch_size``: rows per ``model.generate`` call.
    ``max_concurrency`` stays 1 for a local model (calls are serialised by a lock).

    Sampling keywords of `generate` / `stream`: ``max_tokens`` (default 256),
    ``temperature`` (0 = greedy), ``top_p``, ``seed`` (makes sampling reproducible for the same
    call: the same prompts, in the same batches), ``stop`` (a string or strings: the reply is
    cut before the first one); any other keyword (``top_k``, ``repetition_penalty``, ...) goes
    to ``model.generate``.
    """

    kind = "transformers"

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str = "cpu",
        dtype: Any = None,
        max_batch_size: int = 64,
        max_concurrency: int = 1,
        trust_remote_code: bool = False,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.model = str(model)
        self.device = str(device)
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.max_concurrency = max_concurrency
        self.trust_remote_code = trust_remote_code
        self._lock = threading.Lock()  # one model: one generation at a time
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
        """Load the tokenizer and the model onto ``device`` (idempotent)."""
        with self._lock:
            self._load()

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
        """Free the model (and the GPU memory it held); idempotent."""
        with self._lock:
            if self._model is None:
                return
            on_cuda = str(self._model.device).startswith("cuda")
            self._model = self._tokenizer = self._compiler = None
            self._grammars.clear()
            gc.collect()
            if on_cuda:
                _lib("torch").cuda.empty_cache()

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
        tokenizer = self._tokenizer
        if isinstance(prompt, str):
            text, special = prompt, True
        else:
            messages = chat_messages(prompt)
            if getattr(tokenizer, "chat_template", None):
                text = tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
                special = False  # the template writes its own special tokens
            else:
                lines = [f"{m['role']}: {m['content']}" for m in messages]
                text, special = "\n".join([*lines, "assistant:"]), True
        ids = [int(t) for t in tokenizer(text, add_special_tokens=special)["input_ids"]]
        if not ids:
            if tokenizer.bos_token_id is None:
                raise ValueError("empty prompt (and the tokenizer has no BOS token)")
            ids = [int(tokenizer.bos_token_id)]
        return ids

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

    def _decode(self, tokens: Sequence[int]) -> str:
        eos = set(self._eos_ids)
        kept: list[int] = []
        for token in tokens:
            if token in eos:
                break
            kept.append(token)
        return str(self._tokenizer.decode(kept, skip_special_tokens=True))

    def _generate_batch(
        self,
        rows: Sequence[list[int]],
        *,
        grammar: Any,
        kwargs: dict[str, Any],
        warpers: Sequence[Any],
        stops: Sequence[str],
        max_tokens: int,
    ) -> list[str | Exception]:
        torch = _lib("torch")
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        call = dict(kwargs)
        processor = None
        if grammar is not None:
            processor = _GrammarProcessor(
                _lib("xgrammar"),
                grammar,
                len(rows),
                width,
                self._vocab_size,
                self._eos_ids,
                warpers,
            )
            call["logits_processor"] = [processor]
        if stops:
            call.update(stop_strings=list(stops), tokenizer=self._tokenizer)
        device = self._model.device
        with torch.inference_mode():
            out = self._model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), **call
            )
        new = out[:, width:].cpu()
        if processor is not None:
            processor.catch_up(new)
        replies: list[str | Exception] = []
        for i, tokens in enumerate(new.tolist()):
            try:
                text, stopped = _cut_at_stop(self._decode(tokens), stops)
                if processor is not None and not stopped and not processor.complete(i):
                    replies.append(
                        _truncated(max_tokens)
                        if processor.consumed[i] >= max_tokens and not processor.dead[i]
                        else ValueError("generation ended before the schema was complete")
                    )
                    continue
                replies.append(text if processor is None else _escape_controls(text))
            except Exception as exc:  # one row's failure fails that prompt only
                replies.append(exc)
        return replies

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        schema: Mapping[str, Any] | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        **sampling: Any,
    ) -> list[str | Exception]:
        """One reply per prompt, in order; a prompt that fails (it cannot be encoded, or its
        reply ran out of ``max_tokens`` before ``schema`` was complete) gets its exception.
        Starts the engine if needed."""
        if isinstance(prompts, str):
            raise TypeError("generate takes a list of prompts, not one str")
        stops = _stop_list(stop)
        with self._lock:
            self._load()
            kwargs, warpers = self._generate_kwargs(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                constrained=schema is not None,
                extra=dict(sampling),
            )
            grammar = self._grammar(schema) if schema is not None else None
            results: list[str | Exception | None] = [None] * len(prompts)
            encoded: dict[int, list[int]] = {}
            for i, prompt in enumerate(prompts):
                try:
                    encoded[i] = self._encode(prompt)
                except Exception as exc:
                    results[i] = exc
            order = sorted(encoded, key=lambda i: len(encoded[i]))
            with self._seeded(seed):
                for start in range(0, len(order), self.max_batch_size):
                    chunk = order[start : start + self.max_batch_size]
                    replies = self._generate_batch(
                        [encoded[i] for i in chunk],
                        grammar=grammar,
                        kwargs=kwargs,
                        warpers=warpers,
                        stops=stops,
                        max_tokens=max_tokens,
                    )
                    for i, reply in zip(chunk, replies):
                        results[i] = reply
        return [r if r is not None else RuntimeError("no reply") for r in results]

    async def agenerate(
        self, prompts: Sequence[Prompt], *, schema: Mapping[str, Any] | None = None, **sampling: Any
    ) -> list[str | Exception]:
        """`generate` in a worker thread (calls are serialised by the engine's lock)."""
        return await asyncio.to_thread(self.generate, list(prompts), schema=schema, **sampling)

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
        max_tokens: int = DEFAULT_MAX_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        **sampling: Any,
    ) -> Generator[str, None, None]:
        stops = _stop_list(stop)
        hold = max((len(s) for s in stops), default=1) - 1  # a stop may begin in the tail
        with self._lock:
            self._load()
            torch, transformers = _lib("torch"), _lib("transformers")
            kwargs, warpers = self._generate_kwargs(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                constrained=schema is not None,
                extra=dict(sampling),
            )
            row = self._encode(prompt)
            processor = None
            if schema is not None:
                processor = _GrammarProcessor(
                    _lib("xgrammar"),
                    self._grammar(schema),
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
                        raise _truncated(max_tokens)
                    raise ValueError("generation ended before the schema was complete")

    async def astream(self, prompt: Prompt, **sampling: Any) -> AsyncIterator[str]:
        """The async twin of `stream`: generation runs in a worker thread; closing the
        iterator early stops it."""
        chunks = stream_in_thread(lambda cancel: self._stream(prompt, cancel, **sampling))
        async with contextlib.aclosing(chunks):  # closed early: the generation stops now
            async for chunk in chunks:
                yield chunk
