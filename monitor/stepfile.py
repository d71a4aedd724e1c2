"""One training step as a safetensors file: the sidecar's wire format, also used by ``fpmon analyze``.

Tensors: ``latents`` (n×d, float32/float16/bfloat16), optional ``rewards`` (n, float32; float64, float16 and
bfloat16 are read too) and optional ``reference_rewards`` (n, the same dtypes, finite, only beside ``rewards``:
a held-out judge's rewards of the same responses, which do not drive training). Metadata (safetensors'
string→string header): ``step`` (integer as text) and optional ``lr`` (positive float as text),
``sample_ids``, ``texts``, ``prompts`` (JSON lists of n strings) and ``scalars`` (a JSON object of named
per-step numbers the trainer reports beside the step, e.g. ``{"true_reward": 0.41, "kl": 0.02}``; the rules:
:func:`check_scalars`). A payload without ``scalars`` (written before the field existed) still decodes.

:func:`decode_step` refuses what is malformed (not safetensors, wrong tensor dtypes or shapes, metadata of
the wrong type or length). :func:`check_strings` holds the rules a stored string must follow (valid
UTF-8, no NUL, sample ids of at most :data:`MAX_SAMPLE_ID_CHARS` characters): the sidecar's ingest check
(``monitor.processing.check_step``) and ``MonitorClient.observe`` both apply it, so that a step the
databases would refuse is refused when it is sent, not when the worker stores its results.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

#: dtypes of the ``latents`` tensor (the worker computes in float32 or float64 from these)
LATENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: dtypes of the ``rewards`` tensor: real floating point (the worker reads rewards as float64). Integer,
#: complex and float8 rewards are refused rather than converted: send them as float32.
REWARD_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
#: the metadata lists of strings (one entry per sample)
STRING_FIELDS = ("sample_ids", "texts", "prompts")
#: most characters of one sample id: the length of the databases' ``step_samples.sample_id`` column
#: (VARCHAR(200); ``tests/test_ingest_validation.py`` checks that the two agree)
MAX_SAMPLE_ID_CHARS = 200
#: most characters per entry of each metadata list (None: no limit but the body size)
MAX_CHARS: dict[str, int | None] = {"sample_ids": MAX_SAMPLE_ID_CHARS, "texts": None, "prompts": None}
#: largest step number a run can store (the database's 32-bit signed integer column)
MAX_STEP = 2_147_483_647
#: most named scalars one step may carry (``StepPayload.scalars``)
MAX_SCALARS = 64
#: most characters of one scalar's name
MAX_SCALAR_NAME_CHARS = 64


@dataclass(frozen=True)
class StepPayload:
    """The content of one step file."""

    step: int
    latents: Tensor
    rewards: Tensor | None = None
    lr: float | None = None
    sample_ids: list[str] | None = None
    texts: list[str] | None = None
    prompts: list[str] | None = None
    #: (n,) a second reward of the same responses that does not drive training (a held-out judge); needs
    #: ``rewards``. The monitor's reward evidence then uses the proxy − judge gap.
    reference_rewards: Tensor | None = None
    #: named per-step numbers reported beside the step (e.g. ``true_reward``, ``kl``): stored as the step's
    #: extra scalars, not used by the monitor's math. None (or empty): none. Values are finite floats or None
    #: (no value); build it with :func:`check_scalars`, which also turns NaN into None.
    scalars: Mapping[str, float | None] | None = None


def check_scalars(values: Mapping[str, object] | None, label: str = "scalars") -> dict[str, float | None] | None:
    """``values`` as the ``{name: float | None}`` a step carries, or None when there are none (None or empty).

    The rules: a mapping of at most :data:`MAX_SCALARS` entries; each name a string of 1 to
    :data:`MAX_SCALAR_NAME_CHARS` printable characters (``str.isprintable``: no NUL, control characters, lone
    surrogates or line breaks); each value a real number — a Python ``int``/``float``, a numpy scalar or a 0-d
    tensor/array (read with ``.item()``, so a CUDA tensor is synchronised) — or None. NaN and None both mean
    "no value" and are stored as null; ±Inf is refused (it is a bug upstream, not a measurement).

    Raises ``TypeError`` (not a mapping, a name that is not a string, a value that is not a number: bools,
    strings and tensors of more than one element included) or ``ValueError`` (too many names, an empty,
    over-long or unprintable name, an infinite value); the message names ``label`` and the entry.
    """
    if values is None:
        return None
    if not isinstance(values, Mapping):
        raise TypeError(
            f"{label} must be a mapping of names to numbers, e.g. {{'kl': 0.02}}, got {type(values).__name__}"
        )
    if len(values) > MAX_SCALARS:
        raise ValueError(f"{label} has {len(values)} entries, more than {MAX_SCALARS}; send fewer named scalars")
    out: dict[str, float | None] = {}
    for name, value in values.items():
        if not isinstance(name, str):
            raise TypeError(f"{label} names must be strings, got {type(name).__name__} {name!r}")
        if not 1 <= len(name) <= MAX_SCALAR_NAME_CHARS:
            raise ValueError(f"{label} name {name[:80]!r} has {len(name)} characters; use 1 to {MAX_SCALAR_NAME_CHARS}")
        if not name.isprintable():
            raise ValueError(
                f"{label} name {name!r} contains unprintable characters (NUL, control characters, line breaks or "
                "lone surrogates); use printable text"
            )
        out[name] = _scalar_value(value, f"{label}[{name!r}]")
    return out or None


def _scalar_value(value: object, label: str) -> float | None:
    """One scalar as a finite float or None (see :func:`check_scalars`)."""
    if value is None:
        return None
    if not isinstance(value, numbers.Real) and getattr(value, "ndim", None) == 0:
        item = getattr(value, "item", None)
        value = item() if callable(item) else value  # a 0-d tensor or array
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        shape = getattr(value, "shape", None)
        what = f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else type(value).__name__
        raise TypeError(f"{label} must be a real number (or a 0-d tensor, or None), got {what} ({value!r:.40})")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if math.isnan(number):
        return None
    if math.isinf(number):
        raise ValueError(f"{label} is {number}; send a finite number, or None (NaN) for no value")
    return number


def encode_step(payload: StepPayload) -> bytes:
    """Serialise a step to safetensors bytes (validated: shapes, dtypes, list lengths)."""
    _check(payload)
    tensors = {"latents": payload.latents.detach().cpu().contiguous()}
    if payload.rewards is not None:
        tensors["rewards"] = payload.rewards.detach().to("cpu", torch.float32).contiguous()
    if payload.reference_rewards is not None:  # a copy: safetensors refuses tensors that share memory (ref = rewards)
        tensors["reference_rewards"] = (
            payload.reference_rewards.detach().to("cpu", torch.float32, copy=True).contiguous()
        )
    meta = {"step": str(int(payload.step))}
    if payload.lr is not None:
        meta["lr"] = repr(float(payload.lr))
    for name in STRING_FIELDS:
        value = getattr(payload, name)
        if value is not None:
            meta[name] = json.dumps(list(value))
    scalars = check_scalars(payload.scalars)
    if scalars is not None:
        meta["scalars"] = json.dumps(scalars, allow_nan=False)
    return st_save(tensors, metadata=meta)


def decode_step(data: bytes) -> StepPayload:
    """Parse safetensors bytes into a :class:`StepPayload`; ``ValueError`` says what is wrong."""
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError, IndexError) as exc:
        raise ValueError(f"not a safetensors step payload ({exc}); send a safetensors file") from exc
    meta: dict[str, str] = header.get("__metadata__") or {}
    if "latents" not in tensors:
        raise ValueError("the payload has no tensor named 'latents' (n×d)")
    if "step" not in meta:
        raise ValueError("the payload's metadata has no 'step' (an integer as text)")
    try:
        step = int(meta["step"])
    except ValueError as exc:
        raise ValueError(f"metadata 'step' must be an integer, got {meta['step']!r}") from exc
    lr = None
    if "lr" in meta:
        try:
            lr = float(meta["lr"])
        except ValueError as exc:
            raise ValueError(f"metadata 'lr' must be a number, got {meta['lr']!r}") from exc
    lists: dict[str, list[str] | None] = {}
    for name in STRING_FIELDS:
        if name in meta:
            try:
                value = json.loads(meta[name])
            except json.JSONDecodeError as exc:
                raise ValueError(f"metadata '{name}' must be a JSON list of strings") from exc
            if not isinstance(value, list):
                raise ValueError(f"metadata '{name}' must be a JSON list of strings, got {type(value).__name__}")
            wrong = next((i for i, v in enumerate(value) if not isinstance(v, str)), None)
            if wrong is not None:
                raise ValueError(
                    f"metadata '{name}' must be a JSON list of strings; entry {wrong} is "
                    f"{type(value[wrong]).__name__} ({json.dumps(value[wrong])[:40]})"
                )
            lists[name] = value
        else:
            lists[name] = None
    scalars = _decode_scalars(meta["scalars"]) if "scalars" in meta else None
    payload = StepPayload(
        step=step,
        latents=tensors["latents"],
        rewards=tensors.get("rewards"),
        lr=lr,
        sample_ids=lists["sample_ids"],
        texts=lists["texts"],
        prompts=lists["prompts"],
        reference_rewards=tensors.get("reference_rewards"),
        scalars=scalars,
    )
    _check(payload)
    return payload


def _decode_scalars(text: str) -> dict[str, float | None] | None:
    """Metadata ``scalars``: a JSON object of name → number or null (JSON's ``NaN`` token reads as null)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError("metadata 'scalars' must be a JSON object of names to numbers or null") from exc
    if not isinstance(value, dict):
        raise ValueError(f"metadata 'scalars' must be a JSON object of names to numbers, got {type(value).__name__}")
    try:
        return check_scalars(value, label="metadata 'scalars'")
    except TypeError as exc:
        raise ValueError(str(exc)) from exc


def payload_digest(p: StepPayload) -> str:
    """sha256 of a step's content in a canonical form (tensor dtypes, shapes and bytes; the metadata as
    sorted JSON). Safetensors does not fix the order of its metadata keys, so two encodings of the same
    step can differ byte for byte; this digest does not. ``reference_rewards`` and ``scalars`` enter only
    when present, so that a step without them keeps the digest it had before the fields existed (idempotent
    re-sends); a step sent again with other scalars is other content (a conflict)."""
    h = hashlib.sha256()
    tensors = [("latents", p.latents), ("rewards", p.rewards)]
    if p.reference_rewards is not None:
        tensors.append(("reference_rewards", p.reference_rewards))
    for name, tensor in tensors:
        if tensor is None:
            h.update(f"{name}:none;".encode())
            continue
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    meta: dict[str, object] = {
        "step": p.step,
        "lr": p.lr,
        "sample_ids": p.sample_ids,
        "texts": p.texts,
        "prompts": p.prompts,
    }
    scalars = check_scalars(p.scalars)
    if scalars is not None:
        meta["scalars"] = scalars
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def check_strings(field: str, values: Sequence[str] | None, label: str | None = None) -> None:
    """Raise ``ValueError`` unless every string of metadata list ``field`` (``sample_ids``, ``texts`` or
    ``prompts``) can be stored by the worker in SQLite and PostgreSQL: encodable as UTF-8 (no lone
    surrogate such as ``"\\ud800"``), no NUL character (PostgreSQL's text and JSON refuse it), and at most
    ``MAX_CHARS[field]`` characters (sample ids: :data:`MAX_SAMPLE_ID_CHARS`). ``label`` is how the message
    names the list (default ``metadata '<field>'``; ``MonitorClient.observe`` passes its argument's name).
    The message names the first bad entry, says how many there are and what to change."""
    if values is None:
        return
    label = label or f"metadata '{field}'"
    limit = MAX_CHARS[field]
    joined = "".join(values)
    try:
        joined.encode("utf-8")
        bad_encoding = False
    except UnicodeEncodeError:
        bad_encoding = True
    too_long = limit is not None and any(len(v) > limit for v in values)
    if not (bad_encoding or too_long or "\x00" in joined):
        return
    problems: list[tuple[int, str]] = []
    for i, v in enumerate(values):
        if "\x00" in v:
            problems.append((i, "contains a NUL character ('\\x00'), which PostgreSQL cannot store; remove it"))
        elif limit is not None and len(v) > limit:
            problems.append((i, f"has {len(v)} characters, more than the {limit} the database stores; shorten it"))
        else:
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as exc:
                problems.append(
                    (
                        i,
                        f"is not valid UTF-8 (a lone surrogate {v[exc.start]!r} at character {exc.start}); "
                        "send valid Unicode text",
                    )
                )
    first, why = problems[0]
    others = len(problems) - 1
    more = f" (and {others} more {'entry' if others == 1 else 'entries'} like it)" if others else ""
    raise ValueError(f"{label} entry {first} {why}{more}")


def _check(p: StepPayload) -> None:
    if p.latents.ndim != 2:
        raise ValueError(f"'latents' must be 2-D (n×d), got shape {tuple(p.latents.shape)}")
    if p.latents.dtype not in LATENT_DTYPES:
        raise ValueError(f"'latents' must be float32, float16 or bfloat16, got {p.latents.dtype}")
    n = p.latents.shape[0]
    for name, r in (("rewards", p.rewards), ("reference_rewards", p.reference_rewards)):
        if r is not None and r.dtype not in REWARD_DTYPES:
            raise ValueError(
                f"'{name}' must be real floating point (float32, float64, float16 or bfloat16), got "
                f"{r.dtype}; send them as float32"
            )
        if r is not None and tuple(r.shape) != (n,):
            raise ValueError(f"'{name}' must have shape ({n},) to match the latents, got {tuple(r.shape)}")
    if p.reference_rewards is not None:
        if p.rewards is None:
            raise ValueError(
                "'reference_rewards' need 'rewards': the judge's rewards are compared with the training rewards "
                "of the same responses; send both"
            )
        # checked here, unlike the rewards' (``monitor.processing.check_step``): the monitor computes the
        # proxy − judge gap from them, and a NaN judge score would fail the step in the worker
        if not bool(torch.isfinite(p.reference_rewards).all()):
            raise ValueError("'reference_rewards' contain NaN or Inf; drop those samples or send finite values")
    if p.lr is not None and not (math.isfinite(p.lr) and p.lr > 0):
        raise ValueError(f"'lr' must be a positive finite number, got {p.lr}")
    for name in STRING_FIELDS:
        value: Sequence[str] | None = getattr(p, name)
        if value is not None and len(value) != n:
            raise ValueError(f"metadata '{name}' has {len(value)} entries for {n} latents; pass one per sample")
    try:
        check_scalars(p.scalars)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc


def save_step(path: str | Path, payload: StepPayload) -> None:
    """Write a step file."""
    Path(path).write_bytes(encode_step(payload))


def load_step(path: str | Path) -> StepPayload:
    """Read a step file; errors name the file."""
    try:
        return decode_step(Path(path).read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
