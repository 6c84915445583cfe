"""What the tile engine runs: a network's tile geometry and its batched forward pass.

The tiler (:mod:`napari_unet.core.tiling`) and the block predictor of
:mod:`napari_unet.core.distributed` take any object with the small
:class:`Predictor` protocol: the geometry that keeps tiles seam-free (the
pooling step, the context before a tile's core, the input size for a core)
and a call from a batch of float32 tiles to softmax probabilities.
:class:`NetworkPredictor` is a :class:`~napari_unet.core.model.UNet` on a
device; :class:`TestTimeAugmentation` wraps any predictor.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from napari_unet.core.device import conv_layout, inference_dtype, move_to
from napari_unet.core.model import UNet, valid_input_size

__all__ = [
    "BYTES_PER_PIXEL_CHANNEL",
    "NetworkPredictor",
    "Predictor",
    "TestTimeAugmentation",
    "as_predictor",
    "forward",
    "halo",
    "on_device",
    "tile_for_core",
    "tile_overhead",
]

#: Estimated inference memory per input pixel and base channel (bytes); measured
#: peak for depth-4 networks on the CPU is below this (see docs/benchmarks.md).
BYTES_PER_PIXEL_CHANNEL = 48


@runtime_checkable
class Predictor(Protocol):
    """A batched tile predictor and the geometry that keeps its tiles seam-free.

    Attributes
    ----------
    in_channels, n_classes : int
        Channels of an input tile and classes of the output.
    step : int
        Tile origins are multiples of it (``2 ** depth``: one pooling grid).
    halo : int
        Context (pixels) before the first output pixel of a tile's core.
    device : torch.device
        Where it runs.
    bytes_per_pixel : float
        Estimated memory per input pixel of a forward pass (sizes tiles).
    """

    in_channels: int
    n_classes: int
    step: int
    halo: int
    device: torch.device
    bytes_per_pixel: float

    def tile_for_core(self, core: int) -> int:
        """Input tile edge whose output covers a core of ``core`` pixels."""
        ...

    def output_size(self, size: int) -> int | None:
        """Output edge for an input edge ``size`` (None if not valid)."""
        ...

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities (B, n_classes, h', w') of float32 tiles (B, C, h, w)."""
        ...

    def to(self, device: torch.device) -> Predictor:
        """The same predictor on ``device``."""
        ...


# ---------------------------------------------------------------------------
# the geometry of a U-Net


def halo(model: UNet | Predictor) -> int:
    """Context before the first kept pixel (the mirror padding)."""
    if not isinstance(model, UNet):
        return model.halo
    if model.padding == "valid":
        return model.margin
    # same padding: cover the receptive field (convolutions + pooling windows)
    half = model.step // 2
    return math.ceil((model.margin + model.step) / half) * half


def tile_for_core(model: UNet | Predictor, core: int) -> int:
    """Input tile edge whose output covers a core of ``core`` pixels."""
    if not isinstance(model, UNet):
        return model.tile_for_core(core)
    return valid_input_size(core + 2 * halo(model), model.depth, model.padding)


def tile_overhead(model: UNet | Predictor) -> int:
    """Input tile size minus output core size (the same for every tile)."""
    return tile_for_core(model, model.step) - model.step


# ---------------------------------------------------------------------------
# running a U-Net


def forward(
    net: UNet, batch: np.ndarray, device: torch.device, dtype: torch.dtype | None = None
) -> np.ndarray:
    """Softmax probabilities (float32) of ``net`` on ``device`` for a float32 batch.

    ``dtype`` is the autocast precision (None: float32 throughout).
    """
    with torch.inference_mode():
        x = torch.from_numpy(batch)
        if device.type == "cuda":
            x = x.pin_memory().to(device, non_blocking=True)
        else:
            x = x.to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = net(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()


def on_device(model: UNet, device: torch.device) -> UNet:
    """``model`` itself if it lives on ``device`` in its fastest layout, else such a copy.

    The layout is :func:`~napari_unet.core.device.conv_layout`; the copy is
    in eval mode.
    """
    layout = conv_layout(device)
    param = next(model.parameters())
    same_device = param.device.type == device.type and (
        device.index is None or param.device.index == device.index
    )
    in_layout = all(
        p.is_contiguous(memory_format=layout) for p in model.parameters() if p.dim() == 4
    )
    if same_device and in_layout:
        return model
    return move_to(copy.deepcopy(model), device).eval()


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


class NetworkPredictor:
    """A :class:`~napari_unet.core.model.UNet` as a :class:`Predictor` on one device.

    The network runs in eval mode (its own mode is restored after every
    batch) in the autocast ``precision``; a copy is made, on the first batch, only
    when it lives on another device or in another layout (:func:`on_device`).

    Parameters
    ----------
    net : UNet
    device : torch.device, optional
        Where to run; where the network's parameters are if None.
    precision : {"auto", "float32", "bfloat16", "float16"}
        See :func:`~napari_unet.core.device.inference_dtype`.

    Examples
    --------
    >>> p = NetworkPredictor(UNet(base_channels=2))
    >>> p.step, p.halo, p.tile_for_core(16)
    (16, 92, 204)
    >>> p(np.zeros((1, 1, 204, 204), np.float32)).shape
    (1, 2, 20, 20)
    """

    def __init__(
        self, net: UNet, device: torch.device | None = None, precision: str = "auto"
    ) -> None:
        self.source = net
        self.device = next(net.parameters()).device if device is None else device
        self.precision = precision
        self.dtype = inference_dtype(precision, self.device)
        self.in_channels = net.in_channels
        self.n_classes = net.n_classes
        self.step = net.step
        self.halo = halo(net)
        self.bytes_per_pixel = float(BYTES_PER_PIXEL_CHANNEL * net.config.base_channels)
        self._tile_for_core: dict[int, int] = {}

    @functools.cached_property
    def net(self) -> UNet:
        """The network that runs, on the device and in its layout (:func:`on_device`).

        Made on the first batch, so asking a predictor for its geometry (tile
        sizes, memory per pixel) never copies a network.
        """
        return on_device(self.source, self.device)

    def tile_for_core(self, core: int) -> int:
        """Input tile edge whose output covers a core of ``core`` pixels."""
        if core not in self._tile_for_core:
            self._tile_for_core[core] = tile_for_core(self.source, core)
        return self._tile_for_core[core]

    def output_size(self, size: int) -> int | None:
        """Output edge of the network for an input edge ``size``."""
        return self.source.output_size(size)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities of the network for a float32 batch (B, C, h, w)."""
        with _eval_mode(self.net):
            return forward(self.net, batch, self.device, self.dtype)

    def to(self, device: torch.device) -> NetworkPredictor:
        """The same network on ``device``, in the same precision setting."""
        return NetworkPredictor(self.source, device, self.precision)


def as_predictor(
    model: UNet | Predictor, device: torch.device | None = None, precision: str = "auto"
) -> Predictor:
    """``model`` as a :class:`Predictor` (on ``device`` if given).

    ``precision`` applies to a UNet; a Predictor keeps its own.
    """
    if isinstance(model, UNet):
        return NetworkPredictor(model, device, precision)
    if not isinstance(model, Predictor):
        raise TypeError(
            f"`model` must be a napari_unet UNet or a Predictor, got {type(model).__name__}"
        )
    return model if device is None or model.device == device else model.to(device)


class TestTimeAugmentation:
    """Average a predictor's probabilities over the 8 flips/90-degree rotations of a tile.

    Each batch is predicted in its 8 variants, each output is mapped back and
    the 8 probabilities are averaged. The geometry is the wrapped
    predictor's, so tiles stay seam-free (tile origins are multiples of
    ``step``, so mirrored tiles share one pooling grid too).

    Parameters
    ----------
    inner : Predictor or UNet
        What to average (a UNet runs where its parameters are).

    Examples
    --------
    >>> tta = TestTimeAugmentation(UNet(base_channels=2))
    >>> tta(np.zeros((1, 1, 204, 220), np.float32)).shape
    (1, 2, 20, 36)
    """

    __test__ = False  # not a pytest class

    def __init__(self, inner: UNet | Predictor) -> None:
        self.inner = as_predictor(inner)
        self.in_channels = self.inner.in_channels
        self.n_classes = self.inner.n_classes
        self.step = self.inner.step
        self.halo = self.inner.halo
        self.device = self.inner.device
        self.bytes_per_pixel = self.inner.bytes_per_pixel

    def tile_for_core(self, core: int) -> int:
        """Input tile edge of the wrapped predictor."""
        return self.inner.tile_for_core(core)

    def output_size(self, size: int) -> int | None:
        """Output edge of the wrapped predictor."""
        return self.inner.output_size(size)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Mean probabilities over the 8 variants of ``batch``."""
        total = None
        for k in range(4):
            for flip in (False, True):
                x = np.rot90(batch, k, (-2, -1))
                if flip:
                    x = x[..., ::-1]
                p = self.inner(np.ascontiguousarray(x))
                if flip:
                    p = p[..., ::-1]
                p = np.rot90(p, -k, (-2, -1))
                total = p.copy() if total is None else total + p
        assert total is not None
        return total / 8

    def to(self, device: torch.device) -> TestTimeAugmentation:
        """The same average on ``device``."""
        return TestTimeAugmentation(self.inner.to(device))
