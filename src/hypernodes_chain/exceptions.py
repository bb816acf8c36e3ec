"""Every exception and warning that hypernodes_chain raises.

Each error also subclasses the builtin that users already catch for that kind of
mistake, so ``except ValueError`` keeps working around graph construction::

    HypernodesError
    ├── GraphError                       a graph that cannot be built
    │   ├── DuplicateOutputError         (also ValueError) two nodes produce one output
    │   ├── CycleError                   (also ValueError) the edges form a cycle
    │   └── GraphTypeError               (also TypeError) producer type cannot feed consumer
    ├── PlanError                        (also ValueError) a request the graph cannot answer
    │   ├── MissingInputError            a required input was not given
    │   ├── UnknownInputError            an input (or output) name the graph does not know
    │   ├── InputConflictError           an override leaves an input unused; a bound input given
    │   └── MapInputError                map inputs of unequal length, or not iterable
    ├── NodeError                        (also RuntimeError) a node raised; chained to its error
    ├── InterruptError                   (also RuntimeError) an interrupt nobody can answer
    ├── CallbackError                    (also RuntimeError) a callback raised on an event
    ├── LLMOutputError                   (also ValueError) an LLM reply that does not validate
    ├── EngineError                      (also RuntimeError) an engine could not answer
    │   ├── OllamaError                  a request to Ollama that failed after its retries
    │   ├── OpenAIEngineError            the same for an OpenAI-compatible server (HTTP status)
    │   ├── VLLMEngineError              a vLLM engine that did not start or a request it failed
    │   ├── EngineReplyError             (also TypeError) a reply that is not text (engine, prompt)
    │   └── TruncatedReplyError          (also ValueError) a reply cut at max_tokens; keeps its text
    ├── UnknownEngineError               (also KeyError) an engine name the broker does not know
    ├── ResourceError                    (also RuntimeError) a resource's factory raised
    ├── UnknownResourceError             (also KeyError) a resource name the runner does not know
    ├── ResumeError                      (also ValueError) a folder a writer must not resume
    └── WriterLockedError                (also RuntimeError) another writer holds the folder

    DotNotFoundError                     (RuntimeError) no Graphviz `dot` to render a diagram
    RemoteError                          (RuntimeError) a worker's error that did not pickle
    RecordedError                        (RuntimeError) an item's error read back from _errors/
    CliError                             (Exception) a command-line usage error: exit code 2
    InputRecordError                     (ValueError) a CLI input record that cannot feed the graph

    CacheWarning                         (UserWarning) a value that cannot be hashed or stored
    ResumeWarning                        (UserWarning) resume found damaged shards to redo

Internal signals, private: raised and caught inside one module, never seen by users (nor
pickled)::

    _Unhashable                          (Exception) hashing: a value with no fingerprint
    _Misfit                              (Exception) io buffers: values that do not fit a column

Every error pickles (they travel back from Dask workers) with its message and fields;
as for any pickled exception, ``__cause__``, ``__context__`` and ``__traceback__`` are
dropped, so the chained node error does not arrive with a `NodeError`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CacheWarning",
    "CallbackError",
    "CliError",
    "CycleError",
    "DotNotFoundError",
    "DuplicateOutputError",
    "EngineError",
    "EngineReplyError",
    "GraphError",
    "GraphTypeError",
    "HypernodesError",
    "InputConflictError",
    "InputRecordError",
    "InterruptError",
    "LLMOutputError",
    "MapInputError",
    "MissingInputError",
    "NodeError",
    "OllamaError",
    "OpenAIEngineError",
    "PlanError",
    "RecordedError",
    "RemoteError",
    "ResourceError",
    "ResumeError",
    "ResumeWarning",
    "TruncatedReplyError",
    "UnknownEngineError",
    "UnknownInputError",
    "UnknownResourceError",
    "VLLMEngineError",
    "WriterLockedError",
]


class HypernodesError(Exception):
    """Base class of every hypernodes_chain error."""


class GraphError(HypernodesError):
    """A graph that cannot be built."""


class DuplicateOutputError(GraphError, ValueError):
    """Two nodes produce the same output name."""


class CycleError(GraphError, ValueError):
    """The edges between nodes form a cycle."""


class GraphTypeError(GraphError, TypeError):
    """A producer's annotated return type cannot feed a consumer's annotated parameter."""


class PlanError(HypernodesError, ValueError):
    """A run request that the graph cannot answer."""


class MissingInputError(PlanError):
    """A required input was not given."""


class UnknownInputError(PlanError):
    """An input or output name the graph does not know."""


class InputConflictError(PlanError):
    """An input named like a computed value replaces it, leaving another given input unused;
    or an input that the graph binds (`Graph.bind`) is given again."""


class MapInputError(PlanError):
    """Map inputs that cannot be iterated together (unequal lengths, not iterable)."""


class NodeError(HypernodesError, RuntimeError):
    """A node raised; the node's own exception is chained as ``__cause__``."""

    def __init__(
        self,
        msg: str,
        *,
        node: str,
        index: int | None = None,
        path: tuple[str, ...] = (),
    ) -> None:
        super().__init__(msg)
        self.node = node
        self.index = index
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        # the default reduce calls ``cls(*args)``, which lacks the keyword-only ``node``;
        # like every pickled exception, it arrives without __cause__ and __traceback__
        fields = {"node": self.node, "index": self.index, "path": self.path}
        return (_restore_node_error, (type(self), self.args, fields), self.__dict__)


def _restore_node_error(
    cls: type[NodeError], args: tuple[Any, ...], fields: dict[str, Any]
) -> NodeError:
    error = cls(args[0] if args else "", **fields)
    error.args = args
    return error


class InterruptError(HypernodesError, RuntimeError):
    """An interrupt was raised but no handler or ``iter`` consumer can answer it."""


class CacheWarning(UserWarning):
    """A value could not be hashed or stored, so it is not cached."""


class CallbackError(HypernodesError, RuntimeError):
    """A callback raised while handling an event; its own exception is chained."""


class ResumeError(HypernodesError, ValueError):
    """A writer's folder cannot be resumed as asked (other code, other settings)."""


class WriterLockedError(HypernodesError, RuntimeError):
    """Another writer (this process or another) holds the lock on an output folder."""


class DotNotFoundError(RuntimeError):
    """Graphviz's ``dot`` program, needed to render a diagram, is not on PATH."""


class RemoteError(RuntimeError):
    """An exception raised on a worker that could not be pickled back: its type, message
    and traceback as text."""


class RecordedError(RuntimeError):
    """An item's error read back from its failure record (a writer's ``_errors/``): the
    original's type name and message, the exception object itself being gone."""

    def __init__(self, message: str, error_type: str = "Exception", raw: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.raw = raw  # the reply of an LLM node that did not validate, when recorded

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (*self.args, self.error_type, self.raw))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error_type}: {str(self)!r})"


class CliError(Exception):
    """A usage error of the command line: printed as one line, exit code 2."""


class InputRecordError(ValueError):
    """A record of INPUTS that cannot feed the graph (not an object, or a field missing)."""


class _Unhashable(Exception):
    """Raised deep inside a hash encoding; `hashing.fingerprint` turns it into ``None`` and a
    `CacheWarning`."""

    def __init__(self, value: object, reason: str) -> None:
        super().__init__(reason)
        self.type = type(value)
        self.reason = reason


class _Misfit(Exception):
    """A column's values do not fit its type (raised inside the buffer only)."""


class EngineError(HypernodesError, RuntimeError):
    """An engine could not answer: it failed to start, a request failed after its retries,
    or a reply broke the engine protocol. The engine's own error, if any, is chained."""


class OllamaError(EngineError):
    """A request to Ollama that failed (after retries where the failure was transient)."""


class OpenAIEngineError(EngineError):
    """A request to an OpenAI-compatible server that failed (after retries where the
    failure was transient).

    ``status`` is the HTTP status (None for a connection failure or a timeout),
    ``transient`` whether it was worth retrying, ``attempts`` how many requests were sent.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        transient: bool = False,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient
        self.attempts = attempts
        self.retry_after: float | None = None  # the server's Retry-After, in seconds


class VLLMEngineError(EngineError):
    """A vLLM engine that did not start, a request that failed, or one still pending when
    the engine stopped; the message names the engine, the model and (server mode) the log
    file, kept in ``log_file``."""

    def __init__(self, message: str, *, log_file: str | None = None) -> None:
        super().__init__(message)
        self.log_file = log_file

    def __reduce__(self) -> tuple[Any, ...]:
        return (_vllm_error, (str(self), self.log_file))


def _vllm_error(message: str, log_file: str | None) -> VLLMEngineError:
    return VLLMEngineError(message, log_file=log_file)


class EngineReplyError(EngineError, TypeError):
    """An engine gave something other than text (or an exception) for one prompt: that
    prompt's item fails, naming the engine and the prompt's place in the call."""

    def __init__(self, engine: str, position: int, n: int, got: object) -> None:
        super().__init__(
            f"engine {engine!r} gave {type(got).__name__} for prompt {position} of {n} "
            f"(a reply is the text, or the exception of a prompt that failed)"
        )
        self.engine = engine
        self.position = position
        self.n = n
        self.got_type = type(got).__name__

    def __reduce__(self) -> tuple[Any, ...]:
        return (_engine_reply_error, (self.engine, self.position, self.n, self.got_type))


def _engine_reply_error(engine: str, position: int, n: int, got_type: str) -> EngineReplyError:
    error = EngineReplyError(engine, position, n, None)
    error.args = (str(error).replace("NoneType", got_type, 1),)
    error.got_type = got_type
    return error


class TruncatedReplyError(EngineError, ValueError):
    """A reply cut at ``max_tokens`` before its schema was complete; ``raw`` holds the text
    it had (written with the item's failure, as for other bad replies)."""

    def __init__(self, max_tokens: int, raw: str) -> None:
        super().__init__(
            f"reply truncated at max_tokens={max_tokens} before the schema was complete "
            f"({len(raw):,} characters so far: {raw[:80]!r})"
        )
        self.max_tokens = max_tokens
        self.raw = raw

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.max_tokens, self.raw))


class UnknownEngineError(HypernodesError, KeyError):
    """An engine name the broker does not know (a `KeyError`, as for a missing key)."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownResourceError(HypernodesError, KeyError):
    """A resource name the runner's broker does not know (a `KeyError`, as for a missing
    key); the message lists the registered resources."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


class ResourceError(HypernodesError, RuntimeError):
    """A resource could not be built for a node: its factory raised (chained as
    ``__cause__``). Nothing is remembered: the next use calls the factory again."""

    def __init__(self, msg: str, resource: str = "", node: str = "") -> None:
        super().__init__(msg)
        self.resource = resource
        self.node = node

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (*self.args, self.resource, self.node))


class ResumeWarning(UserWarning):
    """Resume found shards that do not match the manifest; their items are computed again."""


class LLMOutputError(HypernodesError, ValueError):
    """An LLM node's reply did not validate against its ``output_model``.

    ``raw`` holds the reply as the engine gave it, ``errors`` the validation errors (as
    text), ``node`` the node's name; all three survive pickling.
    """

    def __init__(self, node: str, raw: str, errors: object) -> None:
        text = str(errors)
        super().__init__(
            f"llm node {node!r}: the reply does not validate against its output_model "
            f"({text.splitlines()[0] if text else 'no detail'}); raw reply: {raw[:200]!r}"
        )
        self.node = node
        self.raw = raw
        self.errors = text

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.node, self.raw, self.errors))
