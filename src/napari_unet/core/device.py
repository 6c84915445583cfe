"""Device choice (cuda, mps, cpu), mixed precision and memory budgets."""

from __future__ import annotations

import logging
import os
from typing import TypeVar

import torch

from napari_unet.core.precision import check_precision

M = TypeVar("M", bound=torch.nn.Module)

__all__ = [
    "autocast_dtype",
    "available_memory",
    "conv_layout",
    "cpu_has_native_bf16",
    "inference_dtype",
    "is_out_of_memory",
    "move_to",
    "precision_name",
    "select_device",
]


logger = logging.getLogger(__name__)

_GIB = 1024**3


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return the torch device to run on.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (or None) picks CUDA, then Apple MPS, then the CPU;
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` are taken as given but
        must be available.

    Examples
    --------
    >>> select_device("cpu")
    device(type='cpu')
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"`device` must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device` is 'cuda' but no CUDA GPU is available; use 'auto' or 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("`device` is 'mps' but Apple MPS is not available; use 'auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device type {dev.type!r}")
    return dev


def cpu_has_native_bf16() -> bool:
    """True if the CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    Only then does bfloat16 autocast speed the CPU up; elsewhere it is emulated
    and slower than float32.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``device`` (training, and inference's ``"auto"``).

    bf16 (or fp16 where bf16 is missing) on CUDA, bf16 on a CPU that computes
    it natively (:func:`cpu_has_native_bf16`), None (float32) elsewhere.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def conv_layout(device: torch.device) -> torch.memory_format:
    """The memory layout the U-Net's convolutions run fastest in on ``device``.

    Channels-last on CPUs (oneDNN) and CUDA (cuDNN); the default layout on
    Apple MPS, where it was not measured. On this project's 2-core CPU it made
    tiled prediction 1.75x faster in float32 and 2.35x in bfloat16 (base 16),
    and a training step 1.2x (``docs/benchmarks.md``).

    Examples
    --------
    >>> conv_layout(torch.device("cpu"))
    torch.channels_last
    """
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def move_to(model: M, device: torch.device) -> M:
    """``model`` itself, moved to ``device`` and into its :func:`conv_layout`."""
    layout = conv_layout(device)
    return model.to(device).to(memory_format=layout)  # type: ignore[call-overload]


def inference_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of inference in ``precision`` on ``device`` (None: float32).

    ``"auto"`` is bfloat16 on CUDA (float16 where bfloat16 is missing) and on a
    CPU that computes bfloat16 natively (:func:`cpu_has_native_bf16`), float32
    on other CPUs and on Apple MPS; ``"bfloat16"`` and ``"float16"`` ask for
    that autocast anywhere (a CUDA GPU without bfloat16 refuses it). On the
    project's CPU, bfloat16 predicted 2.1-3.2x faster than float32 and changed
    0.04 % of the bundled model's foreground pixels on 100 DSB images
    (``docs/benchmarks.md``).

    Examples
    --------
    >>> inference_dtype("float32", torch.device("cpu")) is None
    True
    >>> inference_dtype("bfloat16", torch.device("cpu"))
    torch.bfloat16
    """
    if check_precision(precision) == "auto":
        return autocast_dtype(device)
    if precision == "float32":
        return None
    if precision == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this CUDA GPU has no bfloat16: use precision 'float16' or 'auto'")
    return torch.bfloat16 if precision == "bfloat16" else torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """``"float32"`` for None (no autocast), else the dtype's name (``"bfloat16"``)."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def available_memory(device: torch.device) -> int:
    """Bytes that can be used on ``device`` now (free VRAM, or available RAM)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # what PyTorch's allocator reserved but holds no tensor in is free for us too
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with napari
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
        return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 4 * _GIB


def is_out_of_memory(err: BaseException) -> bool:
    """True if ``err`` is a (CUDA or MPS) out-of-memory error."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
