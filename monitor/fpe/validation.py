"""Input checks shared by the estimators: errors say what is wrong and what to pass instead."""

from __future__ import annotations

import math

import torch
from torch import Tensor

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_latents(z: Tensor, *, name: str = "latents", dim: int | None = None, min_n: int = 1) -> Tensor:
    """Validate a latent batch: a 2-D floating tensor (n×d), finite, n ≥ ``min_n``, d == ``dim``.

    float16/bfloat16 are upcast to float32 (their range is too small for the products that follow).
    """
    if not isinstance(z, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, d), got {type(z).__name__}")
    if z.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {tuple(z.shape)}")
    if z.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {z.dtype}")
    n, d = z.shape
    if n < min_n:
        raise ValueError(f"{name} needs at least {min_n} samples, got {n}")
    if dim is not None and d != dim:
        raise ValueError(f"{name} has latent dimension {d}, expected {dim} (the projection's input dimension)")
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.to(torch.float32)
    if not bool(torch.isfinite(z).all()):
        bad = int((~torch.isfinite(z)).any(dim=1).sum())
        raise ValueError(f"{name} contains NaN or Inf in {bad} of {n} rows; drop or fix those samples")
    return z


def check_lr(lr: float | None) -> float | None:
    """Validate an optional learning rate η_t: a positive finite number."""
    if lr is None:
        return None
    value = float(lr)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    return value


def check_vector(v: Tensor | None, *, name: str, n: int) -> Tensor | None:
    """Validate an optional per-sample vector (rewards): shape (n,), finite; returned as float64."""
    if v is None:
        return None
    t = torch.as_tensor(v)
    if t.ndim != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the batch, got {tuple(t.shape)}")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf; pass finite values")
    return t
