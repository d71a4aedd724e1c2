"""Encoding of a monitor state (``RLHFMonitor.state_dict()``) for the ``run_states`` table.

The meta dict goes to a JSON column. It may hold non-finite floats (a detector's empty statistics), which
JSON (and PostgreSQL's JSONB) cannot, so they are tagged as ``{"$float": "nan" | "inf" | "-inf"}`` and
restored exactly by :func:`decode_state`. The tensors go to one safetensors blob.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

_TAG = "$float"


def tag_floats(value: Any) -> Any:
    """A JSON-safe copy of ``value``: non-finite floats tagged, tuples as lists (idempotent)."""
    if isinstance(value, float) and not math.isfinite(value):
        return {_TAG: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, dict):
        return {str(k): tag_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [tag_floats(v) for v in value]
    return value


def untag_floats(value: Any) -> Any:
    """Inverse of :func:`tag_floats` (idempotent on untagged values)."""
    if isinstance(value, dict):
        if len(value) == 1 and _TAG in value:
            return float(value[_TAG])
        return {k: untag_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untag_floats(v) for v in value]
    return value


def encode_state(state: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """``{"meta", "tensors"}`` → (JSON-safe meta, safetensors bytes of the tensors, moved to the CPU)."""
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in state["tensors"].items()}
    return tag_floats(state["meta"]), st_save(tensors)


def decode_state(meta: dict[str, Any], tensors: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_state`: ``{"meta": dict, "tensors": dict[str, Tensor]}`` (CPU tensors)."""
    loaded: dict[str, torch.Tensor] = st_load(tensors)
    return {"meta": untag_floats(meta), "tensors": loaded}
