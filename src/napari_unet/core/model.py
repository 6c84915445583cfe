"""The U-Net of Ronneberger, Fischer & Brox (2015) and its shape arithmetic.

With ``padding="valid"`` (the paper) every 3x3 convolution shrinks the map by
2 pixels, so the output is smaller than the input and only some input sizes
work: for depth 4 they are ``188 + 16 n`` and the output is ``input - 184``.
:func:`valid_input_size` and :func:`output_size` expose this arithmetic for any
depth; with ``padding="same"`` inputs must be multiples of ``2 ** depth`` and
the output has the input's size.

References
----------
.. [1] O. Ronneberger, P. Fischer, T. Brox. U-Net: Convolutional Networks for
   Biomedical Image Segmentation. MICCAI 2015, LNCS 9351, 234-241.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from napari_unet.core.preprocess import Normalization

__all__ = [
    "Norm",
    "Padding",
    "UNet",
    "UNetConfig",
    "check_input_size",
    "output_size",
    "valid_input_size",
]

Padding = Literal["valid", "same"]
Norm = Literal["batch", "instance", "group"] | None


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`; primitive fields only, so it can be saved."""

    in_channels: int = 1
    n_classes: int = 2
    depth: int = 4
    base_channels: int = 16
    padding: Padding = "valid"
    norm: Norm = None
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for name in ("in_channels", "n_classes", "depth", "base_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if self.n_classes < 2:
            raise ValueError(f"`n_classes` must be >= 2 (softmax output), got {self.n_classes}")
        if self.padding not in ("valid", "same"):
            raise ValueError(f"`padding` must be 'valid' or 'same', got {self.padding!r}")
        if self.norm not in (None, "batch", "instance", "group"):
            raise ValueError(
                f"`norm` must be None, 'batch', 'instance' or 'group', got {self.norm!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict[str, object]:
        """Return the config as a plain dict (for model files)."""
        return asdict(self)


# ---------------------------------------------------------------------------
# shape arithmetic


def _check_depth(depth: int) -> None:
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"`depth` must be a positive integer, got {depth!r}")


def output_size(input_size: int, depth: int = 4, padding: Padding = "valid") -> int | None:
    """Return the output size for ``input_size``, or None if the size is not valid.

    Parameters
    ----------
    input_size : int
        Input length along one spatial axis.
    depth : int
        Number of 2x2 max-pool steps.
    padding : {"valid", "same"}
        Convolution padding.

    Examples
    --------
    >>> output_size(572)
    388
    >>> output_size(570) is None
    True
    >>> output_size(64, padding="same")
    64
    """
    _check_depth(depth)
    if padding == "same":
        ok = input_size > 0 and input_size % 2**depth == 0
        return input_size if ok else None
    size = input_size
    for _ in range(depth):
        size -= 4
        if size < 2 or size % 2:
            return None
        size //= 2
    size -= 4  # bottom
    for _ in range(depth):
        if size < 1:
            return None
        size = 2 * size - 4
    return size if size >= 1 else None


def _smallest_valid_bottom(depth: int) -> int:
    # the expanding path needs 2 b - 4 >= 1 at every level
    b = 1
    while True:
        size = b
        for _ in range(depth):
            size = 2 * size - 4
            if size < 1:
                break
        else:
            return b
        b += 1


def valid_input_size(
    size: int, depth: int = 4, padding: Padding = "valid", *, round: str = "up"
) -> int:
    """Return the valid input size nearest to ``size`` (rounding ``"up"`` or ``"down"``).

    For valid padding, valid sizes are ``a + 2**depth * n`` with
    ``a = 4 * (2**depth - 1) + 2**depth * (b + 4)`` for the smallest bottom
    size ``b``; for depth 4 they are 188, 204, 220, ...

    Examples
    --------
    >>> valid_input_size(500)
    508
    >>> valid_input_size(500, round="down")
    492
    >>> valid_input_size(10, padding="same")
    16
    """
    _check_depth(depth)
    if round not in ("up", "down"):
        raise ValueError(f"`round` must be 'up' or 'down', got {round!r}")
    step = 2**depth
    if padding == "same":
        smallest = step
    else:
        smallest = 4 * (step - 1) + step * (_smallest_valid_bottom(depth) + 4)
    if size <= smallest:
        return smallest
    n = (size - smallest) / step
    n = math.ceil(n) if round == "up" else math.floor(n)
    return smallest + step * n


def check_input_size(size: int, depth: int = 4, padding: Padding = "valid") -> int:
    """Return ``output_size(size)`` or raise a ValueError naming the nearest valid sizes."""
    out = output_size(size, depth, padding)
    if out is None:
        below = valid_input_size(size, depth, padding, round="down")
        above = valid_input_size(size, depth, padding, round="up")
        near = f"{above}" if below >= above or below > size else f"{below} or {above}"
        raise ValueError(
            f"input size {size} is not valid for a depth-{depth} U-Net with "
            f"{padding!r} padding; nearest valid sizes: {near}"
        )
    return out


# ---------------------------------------------------------------------------
# network


def _norm_layer(norm: Norm, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, padding: Padding, norm: Norm) -> None:
        pad = 1 if padding == "same" else 0
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=pad, padding_mode="zeros"),
            _norm_layer(norm, cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=pad, padding_mode="zeros"),
            _norm_layer(norm, cout),
            nn.ReLU(inplace=True),
        )


def _center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    dy = (x.shape[-2] - height) // 2
    dx = (x.shape[-1] - width) // 2
    return x[..., dy : dy + height, dx : dx + width]


class UNet(nn.Module):
    """The U-Net of Ronneberger et al. (2015).

    A contracting path of two 3x3 convolutions + ReLU per level and 2x2
    max-pooling that doubles the channels, dropout at the bottom, an expanding
    path of 2x2 up-convolutions that halve the channels, concatenated with the
    (cropped) skip connections, and a 1x1 convolution to ``n_classes`` logits.

    Parameters
    ----------
    in_channels : int
        Number of input channels.
    n_classes : int
        Number of output classes (2: background, cell).
    depth : int
        Number of max-pool steps (the paper uses 4).
    base_channels : int
        Channels of the first level (paper: 64; 16 is a CPU-friendly default).
    padding : {"valid", "same"}
        ``"valid"`` as in the paper (output smaller than input) or ``"same"``.
    norm : {None, "batch", "instance", "group"}
        Optional normalization after each convolution (the paper has none).
    dropout : float
        Dropout probability at the bottom of the network.

    Attributes
    ----------
    config : UNetConfig
        The architecture, saved in model files.
    normalization : Normalization
        Input normalization used in training; applied by the high-level
        prediction (CLI, widgets) and saved in model files.
    metadata : dict
        Free-form JSON-like information (training data, history), saved too.

    Examples
    --------
    >>> net = UNet(base_channels=4)
    >>> net(torch.zeros(1, 1, 188, 188)).shape
    torch.Size([1, 2, 4, 4])
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        depth: int = 4,
        base_channels: int = 16,
        padding: Padding = "valid",
        norm: Norm = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.config = UNetConfig(
            in_channels, n_classes, depth, base_channels, padding, norm, dropout
        )
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for width in widths[:-1]:
            self.down.append(_DoubleConv(cin, width, padding, norm))
            cin = width
        self.pool = nn.MaxPool2d(2)
        self.bottom = _DoubleConv(widths[-2], widths[-1], padding, norm)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upconv.append(nn.ConvTranspose2d(2 * width, width, 2, stride=2))
            self.up.append(_DoubleConv(2 * width, width, padding, norm))
        self.head = nn.Conv2d(widths[0], n_classes, 1)
        self._init_weights()
        self.normalization = Normalization()
        self.metadata: dict[str, object] = {}

    @classmethod
    def from_config(cls, config: UNetConfig) -> UNet:
        """Build an untrained U-Net with the architecture ``config``."""
        return cls(
            in_channels=config.in_channels,
            n_classes=config.n_classes,
            depth=config.depth,
            base_channels=config.base_channels,
            padding=config.padding,
            norm=config.norm,
            dropout=config.dropout,
        )

    def _init_weights(self) -> None:
        # He initialisation, as in the paper: std sqrt(2 / fan_in)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # -- geometry -----------------------------------------------------------
    @property
    def depth(self) -> int:
        """Number of max-pool steps."""
        return self.config.depth

    @property
    def in_channels(self) -> int:
        """Number of input channels."""
        return self.config.in_channels

    @property
    def n_classes(self) -> int:
        """Number of output classes."""
        return self.config.n_classes

    @property
    def padding(self) -> Padding:
        """Convolution padding, ``"valid"`` or ``"same"``."""
        return self.config.padding

    @property
    def step(self) -> int:
        """Input sizes (and tile origins) must be multiples of this: ``2 ** depth``."""
        return 2**self.depth

    @property
    def margin(self) -> int:
        """Context on each side that a valid model consumes: ``(input - output) / 2``.

        For a same-padding model the tiler adds this plus ``step`` (the
        pooling windows widen the receptive field), so tiles stay seam-free.
        """
        return 2 * (3 * 2**self.depth - 2)

    def output_size(self, input_size: int) -> int | None:
        """Output size of this network for ``input_size`` (None if invalid)."""
        return output_size(input_size, self.depth, self.padding)

    def valid_input_size(self, size: int, *, round: str = "up") -> int:
        """Nearest valid input size for this network."""
        return valid_input_size(size, self.depth, self.padding, round=round)

    # -- forward ------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (B, n_classes, H', W') for x of shape (B, C, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if not (torch.jit.is_scripting() or torch.jit.is_tracing()):
            for size in x.shape[-2:]:
                check_input_size(int(size), self.depth, self.padding)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips), strict=True):
            x = upconv(x)
            skip = _center_crop(skip, x.shape[-2], x.shape[-1])
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)
