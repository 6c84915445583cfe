"""The precisions inference can run in (no torch import, so the CLI stays quick)."""

from __future__ import annotations

from typing import Literal

__all__ = ["PRECISIONS", "PRECISION_HELP", "Precision", "check_precision"]

#: Arithmetic of inference: ``"auto"`` (see
#: :func:`~napari_unet.core.device.inference_dtype`) or a dtype's name.
Precision = Literal["auto", "float32", "bfloat16", "float16"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
#: What the choices mean, for the CLI's help and the Predict widget's tooltip.
PRECISION_HELP = (
    "the network's arithmetic: auto (bfloat16 on CUDA GPUs and on CPUs that compute it "
    "natively, float32 elsewhere), float32 (exact: tiled equals one pass over the whole "
    "image), bfloat16 or float16 (autocast)"
)


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError.

    Examples
    --------
    >>> check_precision("bfloat16")
    'bfloat16'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision
