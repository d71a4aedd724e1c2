"""Small robust-statistics helpers shared by the offline and streaming detectors.

Everything here is pure numpy and works on 1-D float series. Non-finite entries (NaN, ±inf) are treated
as missing: they are ignored by the statistics and propagate as NaN through differences.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

MAD_TO_SIGMA = 1.4826
"""Consistency factor: 1.4826 · MAD estimates σ for Gaussian data."""

DEFAULT_REL_FLOOR = 1e-6
"""Default lower bound on the scale, relative to |median| (about 10× float32 rounding)."""

DEFAULT_ABS_FLOOR = 1e-12
"""Default absolute lower bound on the scale, so a constant series never divides by zero."""


def as_series(values: npt.ArrayLike, name: str = "series") -> FloatArray:
    """Convert ``values`` to a 1-D float64 array, shape (n,); raise ValueError if it is not 1-D."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of floats, got an array of shape {arr.shape}")
    return arr


def robust_location_scale(
    values: npt.ArrayLike,
    *,
    rel_floor: float = DEFAULT_REL_FLOOR,
    abs_floor: float = DEFAULT_ABS_FLOOR,
) -> tuple[float, float]:
    """Median and robust scale of the finite entries of ``values``.

    Args:
        values: any shape, flattened; non-finite entries are ignored.
        rel_floor: the scale is at least ``rel_floor * |median|`` (same units as ``values``).
        abs_floor: the scale is at least ``abs_floor`` (same units as ``values``), so it is always > 0.

    Returns:
        ``(median, scale)`` in the units of ``values``, where
        ``scale = max(1.4826 * MAD, rel_floor * |median|, abs_floor)`` and MAD is the median absolute
        deviation from the median. For Gaussian data ``scale`` estimates the standard deviation.

    Raises:
        ValueError: if ``values`` has no finite entry.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        raise ValueError("robust_location_scale needs at least one finite value")
    median = float(np.median(arr))
    mad = float(np.median(np.abs(arr - median)))
    scale = max(MAD_TO_SIGMA * mad, rel_floor * abs(median), abs_floor)
    return median, scale


def lagged_difference(x: npt.ArrayLike, lag: int) -> FloatArray:
    """Lag-``lag`` difference ``d[t] = x[t] - x[t - lag]``, aligned with ``x``.

    This is a lag, not ``np.diff(x, n=lag)`` (which is the ``lag``-th order finite difference and has a
    different length): on ``x[t] = t**2`` the lag-3 difference is ``6t - 9``, the third-order difference 0.

    Args:
        x: 1-D series, shape (n,).
        lag: positive integer number of steps.

    Returns:
        float64 array of shape (n,), same units as ``x``; NaN for ``t < lag`` and wherever ``x[t]`` or
        ``x[t - lag]`` is not finite.
    """
    if isinstance(lag, bool) or not isinstance(lag, int | np.integer) or lag < 1:
        raise ValueError(f"lag must be a positive integer, got {lag!r}")
    arr = as_series(x, "x")
    arr = np.where(np.isfinite(arr), arr, np.nan)
    out = np.full(arr.shape, np.nan, dtype=np.float64)
    if arr.size > lag:
        out[lag:] = arr[lag:] - arr[:-lag]
    return out
