"""`VLLMEngine` offline: a ``vllm.LLM`` in this process, fed by one scheduler thread.

`OfflineBackend.start` builds the ``vllm.LLM`` (its engine core runs in a spawned process)
and a `_Scheduler`: one thread, the only one that touches the ``LLMEngine`` from then on.
Callers of any thread or event loop hand it requests; between two ``step`` calls the thread
adds whatever waits (``add_request``, each prompt rendered as ``LLM.generate`` and
``LLM.chat`` render theirs) and settles each request when its output finishes. So the
prompts of a new call join the batch that runs: continuous batching across calls, map
batches and nodes sharing the engine, with vLLM's own scheduler choosing what runs. `generate`
waits on one future per call; `agenerate` awaits the same future without holding a thread.
Streams are requests whose outputs come as deltas (``RequestOutputKind.DELTA``).

``stop()`` fails every request not answered yet (a `VLLMEngineError` saying the engine was
stopped), ends the thread, then shuts the engine core down (its processes end), drops the
``LLM``, runs vLLM's distributed cleanup and empties the CUDA cache; a later call starts a new
engine. The same happens at interpreter exit (the hook is registered after vLLM spawned its
engine core, so it runs before multiprocessing joins that process, which would wait for
ever) and when the backend is collected. A request that vLLM rejects (a prompt longer than
the context) fails alone; an engine that dies fails every request it holds.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import itertools
import multiprocessing
import queue
import sys
import threading
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import TruncatedReplyError, VLLMEngineError
from ._vllm_common import vllm_lib
from .base import Prompt, Reply, Sampling, chat_messages

__all__ = ["OfflineBackend", "Usage"]

_IDS = itertools.count()  # request ids: unique in this process, apart from LLM.generate's


class Usage:
    """Requests answered and the tokens they took, over every start of one engine."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self._lock:
            self._counts["requests"] += 1
            self._counts["prompt_tokens"] += prompt_tokens
            self._counts["completion_tokens"] += completion_tokens

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def sampling_params(
    sampling: Mapping[str, Any], *, schema: Mapping[str, Any] | None = None, delta: bool = False
) -> Any:
    """The ``vllm.SamplingParams`` of a call's keywords (checked as a `Sampling`; vLLM's own
    keywords such as ``top_k`` or ``ignore_eos`` pass through): only the final output of each
    request, or (``delta``) each step's new text."""
    checked = Sampling.of(sampling)
    module = vllm_lib("vllm.sampling_params")
    kind = module.RequestOutputKind
    kwargs: dict[str, Any] = {
        "max_tokens": checked.max_tokens,
        "temperature": checked.temperature,
        "top_p": checked.top_p,
        "seed": checked.seed,
        "stop": list(checked.stop) or None,
        "output_kind": kind.DELTA if delta else kind.FINAL_ONLY,
    }
    if schema is not None:
        structured = getattr(module, "StructuredOutputsParams", None)
        if structured is None:  # pragma: no cover - vLLM before structured_outputs
            raise ImportError(
                "this vLLM has no StructuredOutputsParams; upgrade vLLM for schema= "
                "(structured outputs)"
            )
        kwargs["structured_outputs"] = structured(json=dict(schema))
    kwargs.update(checked.extra)
    return module.SamplingParams(**kwargs)


def _item(prompt: Prompt) -> str | list[dict[str, Any]]:
    """A str prompt as it is, chat messages checked (TypeError for anything else)."""
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, Sequence):
        raise TypeError(f"a prompt is a str or a list of chat messages, got {prompt!r}")
    return chat_messages(prompt)


@dataclass(eq=False)
class _Request:
    """One prompt handed to the scheduler and where its output goes."""

    id: str
    prompt: str | list[dict[str, Any]]
    params: Any  # vllm.SamplingParams
    done: Callable[[Any], None]  # the finished RequestOutput, or the request's exception
    chunk: Callable[[str], None] | None = None  # streams: each step's new text
    completion_tokens: int = 0  # streams: summed over the deltas


@dataclass(eq=False)
class _Call:
    """One `generate` call: its replies fill in as requests finish; ``future`` resolves
    when the last one is in. Settled by the scheduler thread only (once submitted)."""

    where: str
    schema: Mapping[str, Any] | None
    max_tokens: int
    results: list[Any]
    left: int
    future: Future[list[Any]] = field(default_factory=Future)

    def settle(self, index: int, outcome: Any) -> None:
        reply = outcome if isinstance(outcome, BaseException) else self._reply(outcome)
        self.results[index] = reply
        self.left -= 1
        if self.left == 0:
            with contextlib.suppress(InvalidStateError):  # cancelled by its awaiting task
                self.future.set_result(self.results)

    def _reply(self, output: Any) -> Reply | Exception:
        return reply_of(output, self.schema, self.max_tokens, self.where)


def reply_of(
    output: Any, schema: Mapping[str, Any] | None, max_tokens: int, where: str
) -> Reply | Exception:
    """The reply of one finished ``RequestOutput`` (with its token counts), or the
    exception of a failed request: aborted, or (with a schema) cut by ``max_tokens``."""
    completions = getattr(output, "outputs", None) or []
    if not completions:
        return VLLMEngineError(f"{where}: vLLM returned no completion")
    completion = completions[0]
    reason = str(completion.finish_reason)
    if reason in ("abort", "error"):
        return VLLMEngineError(f"{where}: the request ended with {reason!r}")
    if schema is not None and reason == "length":
        return TruncatedReplyError(max_tokens, str(completion.text))
    return Reply(
        str(completion.text),
        prompt_tokens=len(output.prompt_token_ids or ()),
        completion_tokens=len(completion.token_ids or ()),
    )


class _Scheduler:
    """A started ``vllm.LLM`` and the one thread that feeds and steps its engine.

    ``max_live`` bounds the requests handed to vLLM at once; the rest wait here (vLLM runs
    ``max_num_seqs`` of those it holds and queues the others itself)."""

    def __init__(self, llm: Any, where: str, usage: Usage, max_live: int) -> None:
        self.llm: Any = llm
        self.where = where
        self._usage = usage
        self._max_live = max_live
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()  # under _cond
        self._aborts: set[str] = set()  # under _cond
        self._closing: BaseException | None = None  # under _cond: what pending requests get
        self._live: dict[str, _Request] = {}  # the thread's own: requests vLLM holds
        self._thread = threading.Thread(target=self._run, name="hypernodes-vllm", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closing is not None

    def submit(self, requests: Sequence[_Request]) -> None:
        with self._cond:
            error = self._closing
            if error is None:
                self._waiting.extend(requests)
                self._cond.notify()
                return
        for request in requests:
            request.done(error)

    def abort(self, ids: Sequence[str]) -> None:
        """Take these requests out (their callers gave up); unknown ids are ignored."""
        with self._cond:
            if self._closing is None:
                self._aborts.update(ids)
                self._cond.notify()

    def close(self, error: BaseException, *, wait: bool = True) -> None:
        """Fail every pending request with ``error``, shut the engine down and end the
        thread; ``wait``: until that is done (never from the thread itself)."""
        with self._cond:
            if self._closing is None:
                self._closing = error
            self._cond.notify()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def close_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.close(VLLMEngineError(f"{self.where}: the interpreter is exiting"))

    # ----------------------------------------------------------------- the thread

    def _run(self) -> None:
        try:
            while self._turn():
                pass
        except BaseException as exc:  # the engine failed: every request it holds fails
            error = VLLMEngineError(f"{self.where}: vLLM failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            with self._cond:
                if self._closing is None:
                    self._closing = error
        finally:
            self._finish()

    def _turn(self) -> bool:
        """Abort, add what waits (up to ``max_live``), step once; False once closing."""
        with self._cond:
            while not (self._waiting or self._aborts or self._live or self._closing):
                self._cond.wait()
            if self._closing is not None:
                return False
            aborts, self._aborts = self._aborts, set()
            if aborts:
                self._waiting = deque(r for r in self._waiting if r.id not in aborts)
            new: list[_Request] = []
            while self._waiting and len(self._live) + len(new) < self._max_live:
                new.append(self._waiting.popleft())
        engine = self.llm.llm_engine
        gone = [self._live.pop(i) for i in aborts if i in self._live]
        if gone:
            engine.abort_request([r.id for r in gone])
        for request in new:
            self._add(engine, request)
        if self._live:
            for output in engine.step():
                self._output(output)
        return True

    def _add(self, engine: Any, request: _Request) -> None:
        try:
            engine.add_request(request.id, self._render(request.prompt), request.params)
        except Exception as exc:  # vLLM rejects this prompt: it fails alone
            request.done(exc)
        else:
            self._live[request.id] = request

    def _render(self, prompt: str | list[dict[str, Any]]) -> Any:
        """What ``add_request`` takes: the prompt rendered as ``LLM.generate`` (str) or
        ``LLM.chat`` (messages, through the chat template) render it."""
        llm = self.llm
        if isinstance(prompt, str):
            one = getattr(llm, "_preprocess_cmpl_one", None)
            return prompt if one is None else one(prompt)
        chat = getattr(llm, "_preprocess_chat_one", None)
        if chat is not None:
            return chat(prompt)
        tokenizer = llm.get_tokenizer()  # pragma: no cover - vLLM before its renderers
        text = tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True, chat_template=llm.chat_template
        )
        return {"prompt_token_ids": list(tokenizer.encode(text, add_special_tokens=False))}

    def _output(self, output: Any) -> None:
        request = self._live.get(output.request_id)
        if request is None:  # aborted meanwhile
            return
        completion = output.outputs[0] if output.outputs else None
        if request.chunk is not None and completion is not None:
            request.completion_tokens += len(completion.token_ids or ())
            if completion.text:
                request.chunk(str(completion.text))
        if output.finished:
            del self._live[output.request_id]
            completion_tokens = request.completion_tokens
            if request.chunk is None and completion is not None:
                completion_tokens = len(completion.token_ids or ())
            self._usage.add(len(output.prompt_token_ids or ()), completion_tokens)
            request.done(output)

    def _finish(self) -> None:
        """Fail what is pending, then free the engine (in this thread, so that a stop
        asked from a garbage-collection callback or from this thread itself needs no join)."""
        with self._cond:
            error = self._closing
            assert error is not None
            pending = [*self._waiting, *self._live.values()]
            self._waiting.clear()
            self._aborts.clear()
        if self._live:
            with contextlib.suppress(Exception):
                self.llm.llm_engine.abort_request(list(self._live))
            self._live.clear()
        for request in pending:
            request.done(error)
        llm, self.llm = self.llm, None
        _shutdown(llm)


def _shutdown(llm: Any) -> None:
    """End the engine core (its processes and the memory they hold), drop ``llm``, and free
    what this process held (distributed state, CUDA cache)."""
    shutdown = getattr(llm, "shutdown", None)  # newer vLLM releases
    if not callable(shutdown):
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
    try:
        if callable(shutdown):
            shutdown()
    finally:
        del llm, shutdown
        gc.collect()
        with contextlib.suppress(Exception):
            state = sys.modules.get("vllm.distributed.parallel_state")
            if state is not None:
                state.cleanup_dist_env_and_memory()
        multiprocessing.active_children()  # reap the engine core's exited process
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


class OfflineBackend:
    """A ``vllm.LLM`` built on first use and its scheduler; see the module docstring."""

    def __init__(self, model: str, args: Mapping[str, Any], where: str, max_live: int) -> None:
        self.model = model
        self.args = dict(args)
        self.where = where
        self.max_live = max_live
        self._usage = Usage()
        self._lock = threading.Lock()  # start / stop
        self._scheduler: _Scheduler | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def started(self) -> bool:
        return self._scheduler is not None

    @property
    def usage(self) -> dict[str, int]:
        return self._usage.snapshot()

    @property
    def llm(self) -> Any:
        scheduler = self._scheduler
        return scheduler.llm if scheduler is not None else None

    def start(self) -> _Scheduler:
        """The running scheduler; builds the ``LLM`` first if there is none (or it died)."""
        scheduler = self._scheduler
        if scheduler is not None and not scheduler.closed:
            return scheduler
        with self._lock:
            if self._scheduler is not None and self._scheduler.closed:
                self._drop()  # it died: free it before a new one starts
            if self._scheduler is None:
                self._scheduler = self._launch()
            return self._scheduler

    def stop(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is None:
            return
        atexit.unregister(scheduler.close_at_exit)
        if self._finalizer is not None:
            self._finalizer.detach()
        scheduler.close(VLLMEngineError(f"{self.where} was stopped before the reply came"))

    def _launch(self) -> _Scheduler:
        vllm = vllm_lib("vllm")
        try:
            llm = vllm.LLM(model=self.model, **self.args)
        except Exception as exc:
            raise VLLMEngineError(
                f"{self.where}: vLLM did not start: {type(exc).__name__}: {exc}"
            ) from exc
        scheduler = _Scheduler(llm, self.where, self._usage, self.max_live)
        # atexit runs last-registered first: registered after vLLM spawned its engine core,
        # this stops the engine before multiprocessing's own exit hook joins that process
        atexit.register(scheduler.close_at_exit)
        gone = VLLMEngineError(f"{self.where} was garbage-collected before the reply came")
        self._finalizer = weakref.finalize(self, scheduler.close, gone, wait=False)
        self._finalizer.atexit = False  # close_at_exit does it, in the right order
        return scheduler

    # ----------------------------------------------------------------- requests

    def _call(
        self, prompts: list[Prompt], schema: Mapping[str, Any] | None, sampling: dict[str, Any]
    ) -> tuple[_Call, list[_Request]]:
        params = sampling_params(sampling, schema=schema)
        call = _Call(self.where, schema, params.max_tokens, [None] * len(prompts), len(prompts))
        requests = []
        for i, prompt in enumerate(prompts):
            try:
                item = _item(prompt)
            except TypeError as exc:
                call.settle(i, exc)
                continue
            requests.append(_Request(f"hypernodes-{next(_IDS)}", item, params, _settler(call, i)))
        return call, requests

    def generate(
        self, prompts: list[Prompt], schema: Mapping[str, Any] | None, sampling: dict[str, Any]
    ) -> list[Any]:
        call, requests = self._call(prompts, schema, sampling)
        scheduler = self.start()
        scheduler.submit(requests)
        try:
            return call.future.result()
        except BaseException:  # interrupted: its requests leave the engine
            scheduler.abort([r.id for r in requests])
            raise

    async def agenerate(
        self, prompts: list[Prompt], schema: Mapping[str, Any] | None, sampling: dict[str, Any]
    ) -> list[Any]:
        call, requests = self._call(prompts, schema, sampling)
        scheduler = await self._astart()
        scheduler.submit(requests)
        try:
            return await asyncio.wrap_future(call.future)
        except BaseException:  # cancelled: its requests leave the engine
            scheduler.abort([r.id for r in requests])
            raise

    async def _astart(self) -> _Scheduler:
        scheduler = self._scheduler
        if scheduler is not None and not scheduler.closed:
            return scheduler
        return await asyncio.to_thread(self.start)

    def _stream_request(
        self, prompt: Prompt, sampling: dict[str, Any], put: Callable[[tuple[bool, Any]], None]
    ) -> tuple[_Request, Callable[[Any], None]]:
        """A delta request whose chunks and end go to ``put``, and the check of its end."""
        schema = sampling.pop("schema", None)
        params = sampling_params(sampling, schema=schema, delta=True)
        request = _Request(
            f"hypernodes-{next(_IDS)}",
            _item(prompt),
            params,
            done=lambda outcome: put((True, outcome)),
            chunk=lambda text: put((False, text)),
        )

        def check(outcome: Any) -> None:
            if isinstance(outcome, BaseException):
                raise outcome
            reply = reply_of(outcome, schema, params.max_tokens, self.where)
            if isinstance(reply, Exception):
                raise reply

        return request, check

    def stream(self, prompt: Prompt, sampling: dict[str, Any]) -> Generator[str, None, None]:
        items: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        request, check = self._stream_request(prompt, dict(sampling), items.put)
        scheduler = self.start()
        scheduler.submit([request])
        finished = False
        try:
            while True:
                last, value = items.get()
                if last:
                    finished = True
                    check(value)
                    return
                yield value
        finally:
            if not finished:  # closed early: the request leaves the engine
                scheduler.abort([request.id])

    async def astream(self, prompt: Prompt, sampling: dict[str, Any]) -> AsyncGenerator[str, None]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()

        def put(item: tuple[bool, Any]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(items.put_nowait, item)

        request, check = self._stream_request(prompt, dict(sampling), put)
        scheduler = await self._astart()
        scheduler.submit([request])
        finished = False
        try:
            while True:
                last, value = await items.get()
                if last:
                    finished = True
                    check(value)
                    return
                yield value
        finally:
            if not finished:
                scheduler.abort([request.id])


def _settler(call: _Call, index: int) -> Callable[[Any], None]:
    return lambda outcome: call.settle(index, outcome)
