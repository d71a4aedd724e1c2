"""The pipes between the training process and its sender process: length-prefixed pickle frames, and how
tensors and observed steps travel in them.

A frame is an 8-byte little-endian length, then a ``pickle`` (protocol 5) of one message tuple. Tensors
travel as ``(dtype name, numpy array)`` (:func:`tensor_to_wire`): numpy arrays pickle as raw bytes, torch
tensors do not. An observed step (``items.Item``) travels as a dict (:func:`item_to_wire`).
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .items import Item

#: the length before each frame: 8 bytes, little-endian
FRAME_HEADER = struct.Struct("<Q")
#: largest message accepted from the other side (a step of 4096 × 4096 float32 latents is 64 MiB)
MAX_FRAME_BYTES = 2**31


class SenderDied(Exception):
    """The sender process is gone (its pipe is closed)."""


# ---------------------------------------------------------------------------------------------- framing
def write_frame(fd: int, obj: Any) -> None:
    """Write one message to file descriptor ``fd`` (blocking; the GIL is released while the pipe is full)."""
    data = pickle.dumps(obj, protocol=5)
    view = memoryview(FRAME_HEADER.pack(len(data)) + data)
    while view:
        try:
            n = os.write(fd, view)
        except (BrokenPipeError, OSError) as exc:
            raise SenderDied(f"the pipe is closed ({exc})") from exc
        view = view[n:]


def read_exact(fd: int, n: int) -> bytes | None:
    """Exactly ``n`` bytes from ``fd``, or None when it ends (or fails) first."""
    chunks: list[bytes] = []
    while n > 0:
        try:
            chunk = os.read(fd, min(n, 1 << 20))
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> Any | None:
    """Read one message from ``fd``; None at end of file (the other side closed its end or died)."""
    head = read_exact(fd, FRAME_HEADER.size)
    if head is None:
        return None
    (size,) = FRAME_HEADER.unpack(head)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"sender message of {size} bytes exceeds {MAX_FRAME_BYTES}; the pipe is out of sync")
    body = read_exact(fd, size)
    return None if body is None else pickle.loads(body)


# ---------------------------------------------------------------------------------------------- tensors on the wire
def tensor_to_wire(t: Tensor | None) -> tuple[str, np.ndarray] | None:
    """A CPU tensor as (dtype name, numpy array) — pickled as raw bytes, unlike a torch tensor."""
    if t is None:
        return None
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return "bfloat16", t.view(torch.int16).numpy()
    return str(t.dtype).removeprefix("torch."), t.numpy()


def tensor_from_wire(w: tuple[str, np.ndarray] | None) -> Tensor | None:
    """Inverse of :func:`tensor_to_wire`."""
    if w is None:
        return None
    name, arr = w
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.view(torch.bfloat16) if name == "bfloat16" else t


def item_to_wire(item: Item) -> dict[str, Any]:
    """An observed step (with latents: the training process embeds before handing a step over) as a
    picklable dict: ``step``, ``latents``, ``rewards``, ``reference_rewards`` (wire tensors), ``texts``,
    ``prompts``, ``sample_ids``, ``lr``, ``scalars`` (a dict of floats/None, or None)."""
    return {
        "step": item.step,
        "latents": tensor_to_wire(item.latents),
        "rewards": tensor_to_wire(item.rewards),
        "reference_rewards": tensor_to_wire(item.reference_rewards),
        "texts": item.texts,
        "prompts": item.prompts,
        "sample_ids": item.sample_ids,
        "lr": item.lr,
        "scalars": item.scalars,
    }


def item_from_wire(wire: dict[str, Any]) -> Item:
    """Inverse of :func:`item_to_wire` (the byte size is computed again, as ``observe`` does)."""
    return Item.of(
        int(wire["step"]),
        tensor_from_wire(wire["latents"]),
        wire["texts"],
        tensor_from_wire(wire["rewards"]),
        wire["prompts"],
        wire["sample_ids"],
        wire["lr"],
        reference_rewards=tensor_from_wire(wire.get("reference_rewards")),
        scalars=wire.get("scalars"),
    )
