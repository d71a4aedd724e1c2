"""The on-disk spool of undelivered steps: one folder per run, every file written atomically.

Layout::

    <spool_dir>/<run name, sanitised>/run.json                        {"name", "latent_dim", "config"}
    <spool_dir>/<run name, sanitised>/step-<10 digits>.safetensors    the wire format (monitor.stepfile)
    <spool_dir>/<run name, sanitised>/rejected/step-….safetensors     refused by the server (4xx) …
    <spool_dir>/<run name, sanitised>/rejected/step-….txt             … and the server's message

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so a crash
leaves either the whole file or none. A step file is deleted only after the server acknowledged it (200:
already had it, 202: accepted), so replaying twice is harmless: the server is idempotent on (run, step).

Steps are replayed in step order: the sidecar fails a step that arrives after a later step of the same run
was processed. The client's ``Deliverer`` (``monitor.client.delivery``) drains its own run's folder;
``fpmon sync SPOOL_DIR`` (``monitor.client.replay``) replays every folder later.

This module knows files only: no HTTP, no SQL.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..stepfile import decode_step

RUN_FILE = "run.json"
REJECTED_DIR = "rejected"
#: a step file's name; group 1 is the step number
STEP_RE = re.compile(r"^step-(\d{10})\.safetensors$")
_SAFE_RE = re.compile(r"[^A-Za-z0-9._-]")


def sanitise_run_name(name: str) -> str:
    """A folder name for run ``name``: letters, digits, ``.``, ``_`` and ``-`` kept, anything else ``_``.

    When characters had to be replaced, 8 hex digits of the name's sha1 are appended so that two names
    differing only in such characters ("a b", "a/b") get different folders.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a run needs a non-empty name (run_name)")
    safe = _SAFE_RE.sub("_", name.strip())[:120].strip(".") or "run"
    if safe != name:
        safe = f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder + ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class RunInfo:
    """What ``run.json`` holds: enough to create the run on the server (``POST /v1/runs``)."""

    name: str
    latent_dim: int
    config: dict[str, Any] = field(default_factory=dict)


class RunSpool:
    """One run's spool folder (see the module docstring). Safe to use from several threads of one process:
    each operation is a single atomic file operation."""

    def __init__(self, spool_dir: str | Path, run_name: str) -> None:
        self.run_name = run_name
        self.path = Path(spool_dir) / sanitise_run_name(run_name)

    @classmethod
    def from_folder(cls, folder: Path) -> RunSpool:
        """The spool of an existing folder; the run's name comes from its ``run.json`` (else the folder name)."""
        spool = cls.__new__(cls)
        spool.path = folder
        try:
            info = spool.read_info()
        except ValueError:  # replay_run reports the malformed file
            info = None
        spool.run_name = info.name if info is not None else folder.name
        return spool

    # ------------------------------------------------------------------ run.json
    def write_info(self, info: RunInfo) -> None:
        """Write ``run.json`` (atomically; the same content again is a no-op)."""
        data = json.dumps({"name": info.name, "latent_dim": info.latent_dim, "config": info.config}, indent=1)
        target = self.path / RUN_FILE
        if target.is_file() and target.read_text() == data:
            return
        atomic_write(target, data.encode())

    def read_info(self) -> RunInfo | None:
        """``run.json``, or None when missing. ``ValueError`` names the file when it is malformed."""
        target = self.path / RUN_FILE
        if not target.is_file():
            return None
        try:
            data = json.loads(target.read_text())
            return RunInfo(name=str(data["name"]), latent_dim=int(data["latent_dim"]), config=dict(data["config"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{target}: not a valid run.json ({exc}); expected name, latent_dim, config") from exc

    # ------------------------------------------------------------------ step files
    def step_path(self, step: int) -> Path:
        """Where step ``step``'s payload is (or would be) spooled."""
        return self.path / f"step-{int(step):010d}.safetensors"

    def write_step(self, step: int, body: bytes) -> Path:
        """Store one step's payload (atomically); returns its path."""
        target = self.step_path(step)
        atomic_write(target, body)
        return target

    def steps(self) -> list[int]:
        """The spooled step numbers, ascending (temporary and rejected files are not listed)."""
        if not self.path.is_dir():
            return []
        found = []
        for entry in os.scandir(self.path):
            match = STEP_RE.match(entry.name)
            if match and entry.is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def read_step(self, step: int) -> bytes:
        """The spooled payload of step ``step`` (``OSError`` when it is gone)."""
        return self.step_path(step).read_bytes()

    def delete_step(self, step: int) -> None:
        """Forget step ``step`` (delivered); no error when it is already gone."""
        self.step_path(step).unlink(missing_ok=True)

    def reject(self, step: int, body: bytes | None, message: str) -> Path:
        """Move (or write) a refused step to ``rejected/`` with the server's message beside it; returns the
        payload's new path."""
        folder = self.path / REJECTED_DIR
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / self.step_path(step).name
        source = self.step_path(step)
        if body is None:
            os.replace(source, target)
        else:
            atomic_write(target, body)
            source.unlink(missing_ok=True)
        atomic_write(target.with_suffix(".txt"), (message.rstrip() + "\n").encode())
        return target

    def rejected(self) -> list[int]:
        """The step numbers in ``rejected/``, ascending."""
        folder = self.path / REJECTED_DIR
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for e in os.scandir(folder) if (m := STEP_RE.match(e.name)))


def run_folders(spool_dir: str | Path) -> list[Path]:
    """The run folders of a spool directory (those with a ``run.json`` or a step file), by name."""
    root = Path(spool_dir)
    if not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and ((entry / RUN_FILE).is_file() or any(STEP_RE.match(p.name) for p in entry.iterdir())):
            out.append(entry)
    return out


def infer_info(spool: RunSpool, first_step: int) -> RunInfo:
    """Without run.json: the folder's name and the first step's latent dimension."""
    payload = decode_step(spool.read_step(first_step))
    return RunInfo(name=spool.run_name, latent_dim=int(payload.latents.shape[1]), config={})
