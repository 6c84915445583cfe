"""Pixel-weighted cross-entropy (paper eq. 1) with an optional Dice term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["weighted_cross_entropy"]


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    *,
    dice_weight: float = 0.0,
) -> torch.Tensor:
    """Mean of ``w(x) * -log p_target(x)`` over the pixels with ``w(x) > 0``.

    Parameters
    ----------
    logits : tensor of shape (B, K, M, N)
    target : int64 tensor of shape (B, M, N)
        Class per pixel (any value where the weight is 0).
    weights : float tensor of shape (B, M, N)
        Per-pixel weight; 0 = unknown pixel, ignored.
    dice_weight : float
        Adds ``dice_weight * (1 - soft Dice)`` of the foreground (classes >= 1)
        over the known pixels.

    Returns
    -------
    loss : scalar tensor

    Examples
    --------
    >>> logits = torch.zeros(1, 2, 2, 2)
    >>> loss = weighted_cross_entropy(logits, torch.zeros(1, 2, 2, dtype=torch.long),
    ...                               torch.ones(1, 2, 2))
    >>> round(loss.item(), 4)  # log(2)
    0.6931
    """
    if logits.shape[-2:] != target.shape[-2:] or target.shape != weights.shape:
        raise ValueError(
            f"shapes differ: logits {tuple(logits.shape)}, target {tuple(target.shape)}, "
            f"weights {tuple(weights.shape)}"
        )
    logits = logits.float()
    known = weights > 0
    n_known = known.sum().clamp_min(1)
    ce = F.cross_entropy(logits, target.clamp_min(0), reduction="none")
    loss = (ce * weights).sum() / n_known
    if dice_weight > 0:
        fg_prob = 1 - torch.softmax(logits, dim=1)[:, 0]
        fg = (target > 0).float()
        mask = known.float()
        inter = (fg_prob * fg * mask).sum()
        denom = ((fg_prob + fg) * mask).sum().clamp_min(1e-6)
        loss = loss + dice_weight * (1 - 2 * inter / denom)
    return loss
