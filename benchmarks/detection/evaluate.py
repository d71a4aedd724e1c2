"""Evaluate every detector on recorded runs, per split: windows, detections, delays, false alarms, plots.

Inputs: run folders written by ``record.py`` (every folder under ``EvalConfig.runs_dir`` with a ``run.json``).
Outputs, per split (``dev`` → ``docs/validation/detection/``, ``heldout`` → ``docs/validation/detection-heldout/``):
``results.json`` (windows, every detector's hits and scores on every run, the thresholds, the summary rows),
``table.md`` (one table per kind and mode), ``traces/<run>.json`` (fpmon's per-step evidence, for plots),
``<run>.png`` (exploit and discovery runs, and a few controls) and ``summary.png``. The tables are also
written into ``docs/validation.md``: development between the ``detection-table`` markers, held-out between
the ``detection-heldout`` markers (created after the development block when missing).

The definitions (split, windows, scoring) are in ``scoring.py``. Thresholds: every baseline in *default*
mode uses its fixed default; in *calibrated* mode its threshold is set on the development control runs
(seeds 0–4, pooled) at ``false_alarm_rate`` alarms per step, then applied unchanged to every run. fpmon's
detectors keep their e-detector threshold log(1/α) in both modes.
"""

from __future__ import annotations

import csv
import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from monitor.rlhf import MonitorConfig, RLHFMonitor
from monitor.stepfile import load_step

from .detectors import (
    Detector,
    MMDDetector,
    RunData,
    SeriesSpikeDetector,
)
from .fpmon import (
    FpmonDetector,
    FpmonTrace,
    MonitorFactory,
    TraceStore,
    fpmon_detectors,
    replay_run,
)
from .scoring import (
    DEFAULT_COOLDOWN,
    SPLITS,
    RunScore,
    Split,
    TruthConfig,
    Window,
    detection_window,
    markdown_tables,
    score_run,
    split_of,
    summarize,
    windows_markdown,
)

DOC = Path("docs/validation.md")
MARKERS: dict[Split, tuple[str, str]] = {
    "dev": ("<!-- detection-table:start -->", "<!-- detection-table:end -->"),
    "heldout": ("<!-- detection-heldout:start -->", "<!-- detection-heldout:end -->"),
}
SplitChoice = Literal["dev", "heldout", "all"]
STALE = ("*.png", "*.csv", "results.json", "table.md", "traces/*.json")
"""Files of an earlier evaluation removed from a split's output folder before it is written again."""


@dataclass(frozen=True)
class EvalConfig:
    """Settings of the evaluation (defaults: the benchmark's; the quick smoke run shrinks the windows).

    Attributes:
        runs_dir: folder holding the run folders.
        split: which runs to evaluate: ``dev``, ``heldout`` or ``all`` (both, each to its own folder).
        doc_dir, heldout_doc_dir: where each split's results, tables and plots go.
        false_alarm_rate: target rate of the calibrated mode (per step; 0.001 = 1 per 1000 steps).
        truth: the ground-truth definitions (``scoring.TruthConfig``).
        cooldown: alarm events are at least this many steps + 1 apart (``RLHFMonitor``'s default).
        monitor_warmup: ``MonitorConfig.warmup_steps`` (None: the shipped default).
        evidence: overrides of ``MonitorConfig.evidence`` (``EvidenceConfig`` field -> value; empty: defaults).
        zscore_window, zscore_min_history: trailing window of the scalar baselines.
        mmd_reference_steps: first steps pooled as the MMD reference.
        n_permutations: permutations of the MMD test.
        cache_dir: fpmon's replays are cached here (``<run>.<key>.json``, reused while the recording's files
            are unchanged); None: no cache.
        jobs: processes replaying fpmon in parallel (one torch thread each).
        plot_controls: per-run plots for this many control runs per split.
        write_doc: write the tables into ``doc_path`` between the split's markers.
        doc_path: the validation document.
    """

    runs_dir: Path = Path("bench-out/detection")
    split: SplitChoice = "dev"
    doc_dir: Path = Path("docs/validation/detection")
    heldout_doc_dir: Path = Path("docs/validation/detection-heldout")
    false_alarm_rate: float = 0.001
    truth: TruthConfig = field(default_factory=TruthConfig)
    cooldown: int = DEFAULT_COOLDOWN
    monitor_warmup: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    zscore_window: int = 20
    zscore_min_history: int = 10
    mmd_reference_steps: int = 5
    n_permutations: int = 200
    cache_dir: Path | None = Path("bench-out/detection-cache")
    jobs: int = 1
    plot_controls: int = 3
    write_doc: bool = True
    doc_path: Path = DOC

    def splits(self) -> tuple[Split, ...]:
        if self.split not in ("dev", "heldout", "all"):
            raise ValueError(f"split must be 'dev', 'heldout' or 'all', got {self.split!r}")
        return SPLITS if self.split == "all" else (self.split,)

    def out_dir(self, split: Split) -> Path:
        return self.doc_dir if split == "dev" else self.heldout_doc_dir

    def monitor_config(self) -> MonitorConfig:
        cfg = MonitorConfig()
        if self.monitor_warmup is not None:
            cfg = replace(cfg, warmup_steps=self.monitor_warmup)
        if self.evidence:
            cfg = replace(cfg, evidence=replace(cfg.evidence, **self.evidence))
        return cfg

    def detectors(self, store: TraceStore, embedder: str = "model") -> list[Detector]:
        """fpmon's variants (``detectors.fpmon_detectors``), the four scalar baselines and MMD."""
        z = {"window": self.zscore_window, "min_history": self.zscore_min_history}
        dets: list[Detector] = list(fpmon_detectors(self.monitor_config(), store, embedder))
        dets += [
            SeriesSpikeDetector("reward_z", "reward_mean", **z),
            SeriesSpikeDetector("kl_spike", "kl", **z),
            SeriesSpikeDetector("length_spike", "length", **z),
            SeriesSpikeDetector("entropy_drop", "entropy", sign=-1.0, **z),
            MMDDetector(embedder, reference_steps=self.mmd_reference_steps, n_permutations=self.n_permutations),
        ]
        return dets


# ---------------------------------------------------------------------------------------------- loading
def load_run(run_dir: Path, embedder: str = "model") -> RunData:
    """Read one recorded run folder: scalars, the ``embedder``'s step files, per-sample rewards, judge and markers.

    The per-sample arrays come from ``samples.jsonl`` (``reward`` = the driving reward, ``judge``, ``marker``);
    its steps, the step files' and ``scalars.csv``'s must agree.
    """
    meta_path = run_dir / "run.json"
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{run_dir} has no run.json: record it first (python benchmarks/detection/run.py record)"
        )
    meta = json.loads(meta_path.read_text())
    with (run_dir / "scalars.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    steps = np.array([int(r["step"]) for r in rows], dtype=np.int64)
    scalars = {k: np.array([float(r[k]) for r in rows]) for k in rows[0] if k != "step"} if rows else {}
    payloads = [load_step(f) for f in sorted((run_dir / embedder).glob("step_*.safetensors"))]
    if [p.step for p in payloads] != steps.tolist():
        raise ValueError(f"{run_dir}/{embedder}: step files do not match scalars.csv; record the run again")
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines() if line.strip()]
    if [int(s["step"]) for s in samples] != steps.tolist():
        raise ValueError(f"{run_dir}/samples.jsonl: steps do not match scalars.csv; record the run again")
    return RunData(
        source=str(run_dir),
        name=meta["name"],
        kind=meta["kind"],
        seed=int(meta["seed"]),
        steps=steps,
        scalars=scalars,
        latents={embedder: [p.latents for p in payloads]},
        rewards=[torch.tensor(s["reward"], dtype=torch.float32) for s in samples],
        judge=[torch.tensor(s["judge"], dtype=torch.float32) for s in samples],
        marker=[np.asarray(s["marker"], dtype=bool) for s in samples],
        texts=[p.texts or [] for p in payloads],
        sample_ids=[p.sample_ids or [] for p in payloads],
        lrs=[p.lr for p in payloads],
    )


def load_runs(runs_dir: Path) -> list[RunData]:
    """Every finished recording under ``runs_dir`` (a folder with a ``run.json``), by name."""
    run_dirs = sorted(p for p in runs_dir.iterdir() if (p / "run.json").exists()) if runs_dir.exists() else []
    if not run_dirs:
        raise FileNotFoundError(f"no recorded runs under {runs_dir}; run `python benchmarks/detection/run.py record`")
    return [load_run(p) for p in run_dirs]


# ---------------------------------------------------------------------------------------------- fpmon replays
@functools.lru_cache(maxsize=1)
def monitor_digest() -> str:
    """sha256 (16 hex digits) over the sources of ``monitor/rlhf``, ``monitor/detect`` and ``monitor/fpe``: a
    cached replay is reused only by the monitor code that computed it."""
    import hashlib

    import monitor

    root = Path(monitor.__file__).parent
    h = hashlib.sha256()
    for sub in ("rlhf", "detect", "fpe"):
        for path in sorted((root / sub).glob("*.py")):
            h.update(f"{sub}/{path.name}".encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run_fingerprint(run: RunData) -> str:
    """Identifies a recording's files (size and mtime of its run.json, scalars.csv and samples.jsonl) and the
    monitor code (:func:`monitor_digest`)."""
    parts = [f"monitor:{monitor_digest()}"]
    if run.source is None:
        return "|".join([*parts, f"synthetic:{run.name}"])
    for name in ("run.json", "scalars.csv", "samples.jsonl"):
        st = (Path(run.source) / name).stat()
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _replay_job(job: tuple[str, str, list[tuple[str, dict[str, Any], bool]]]) -> list[tuple[str, dict[str, Any]]]:
    """Worker: load one run and replay it once per (key, config, judge); returns (key, trace dict) pairs."""
    torch.set_num_threads(1)
    source, embedder, todo = job
    run = load_run(Path(source), embedder)
    return [(key, replay_run(run, MonitorConfig.from_dict(cfg), judge, embedder).to_dict()) for key, cfg, judge in todo]


def prefetch_traces(
    runs: Sequence[RunData],
    detectors: Sequence[Detector],
    store: TraceStore,
    config: EvalConfig,
    log: Callable[[str], None],
) -> None:
    """Fill ``store`` with every fpmon replay the detectors need on ``runs``: from the disk cache, else computed
    (in ``config.jobs`` processes when > 1 and the store replays the real ``RLHFMonitor``) and cached."""
    fdets = [d for d in detectors if isinstance(d, FpmonDetector)]
    real = store.factory is RLHFMonitor  # only the real monitor's replays go to (and come from) the disk cache
    cache_dir = config.cache_dir if real else None
    todo: dict[str, list[tuple[str, dict[str, Any], bool]]] = {}
    by_name = {r.name: r for r in runs}
    for run in runs:
        for det in fdets:
            key = store.key(det.config, det.judge, det.embedder)
            if (run.name, key) in store.traces or any(k == key for k, _, _ in todo.get(run.name, [])):
                continue
            path = cache_dir / f"{run.name}.{key}.json" if cache_dir else None
            if path is not None and path.exists():
                data = json.loads(path.read_text())
                if data.get("fingerprint") == run_fingerprint(run):
                    store.traces[(run.name, key)] = FpmonTrace.from_dict(data["trace"])
                    continue
            todo.setdefault(run.name, []).append((key, det.config.to_dict(), det.judge))
    if not todo:
        return
    n = sum(len(v) for v in todo.values())
    log(f"replaying RLHFMonitor: {n} replays of {len(todo)} runs ({config.jobs} process(es))")
    embedder = fdets[0].embedder
    jobs = [(str(by_name[name].source), embedder, items) for name, items in todo.items()]
    parallel = config.jobs > 1 and real and all(by_name[k].source for k in todo)
    if parallel:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(config.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_replay_job, jobs))
    else:
        results = [
            [(key, replay_run(by_name[name], MonitorConfig.from_dict(cfg), judge, embedder, store.factory).to_dict())
             for key, cfg, judge in items]
            for name, items in todo.items()
        ]  # fmt: skip
    for name, pairs in zip(todo, results, strict=True):
        for key, data in pairs:
            store.traces[(name, key)] = FpmonTrace.from_dict(data)
            if cache_dir is not None:
                cache_dir.mkdir(parents=True, exist_ok=True)
                blob = {"fingerprint": run_fingerprint(by_name[name]), "trace": data}
                (cache_dir / f"{name}.{key}.json").write_text(json.dumps(blob))


# ---------------------------------------------------------------------------------------------- evaluation
def calibrate_all(
    detectors: Sequence[Detector], dev_controls: Sequence[RunData], false_alarm_rate: float
) -> dict[str, float | None]:
    """Each detector's calibrated threshold on the pooled development controls (None: not calibrated)."""
    bad = [r.name for r in dev_controls if r.role != "control" or split_of(r.kind, r.seed) != "dev"]
    if bad:
        raise ValueError(f"calibration must use development control runs only, got {bad}")
    if not dev_controls:
        raise ValueError("no development control run (control seeds 0–4): the calibrated mode needs them")
    return {det.name: det.calibrate(dev_controls, false_alarm_rate) for det in detectors}


def score_split(
    runs: Sequence[RunData],
    detectors: Sequence[Detector],
    thresholds: dict[str, float | None],
    config: EvalConfig,
) -> tuple[dict[str, Window | None], list[RunScore]]:
    """Windows of ``runs`` and every detector's scores on them in both modes."""
    windows = {r.name: detection_window(r, config.truth) for r in runs}
    scores: list[RunScore] = []
    for det in detectors:
        for run in runs:
            default = det.detect(run)
            scores.append(score_run(default, "default", run, windows[run.name], config.cooldown))
            thr = thresholds.get(det.name)
            calibrated = default if thr is None else det.detect(run, thr)
            scores.append(score_run(calibrated, "calibrated", run, windows[run.name], config.cooldown))
    return windows, scores


def evaluate(
    config: EvalConfig, log: Callable[[str], None] = print, factory: MonitorFactory = RLHFMonitor
) -> dict[str, dict[str, Any]]:
    """Evaluate the split(s) of ``config``; write each split's outputs; return split -> its result."""
    splits = config.splits()
    runs = load_runs(config.runs_dir)
    dev_controls = [r for r in runs if r.role == "control" and split_of(r.kind, r.seed) == "dev"]
    store = TraceStore(factory)
    detectors = config.detectors(store)
    chosen = {s: [r for r in runs if split_of(r.kind, r.seed) == s] for s in splits}
    prefetch_traces([r for s in splits for r in chosen[s]], detectors, store, config, log)
    thresholds = calibrate_all(detectors, dev_controls, config.false_alarm_rate)
    log("calibrated on " + ", ".join(r.name for r in dev_controls) + ": " + json.dumps(thresholds, default=str))
    results: dict[str, dict[str, Any]] = {}
    for split in splits:
        windows, scores = score_split(chosen[split], detectors, thresholds, config)
        result = {
            "split": split,
            "config": asdict(config),
            "monitor_config": config.monitor_config().to_dict(),
            "calibrated_on": [r.name for r in dev_controls],
            "thresholds": thresholds,
            "runs": {r.name: _run_meta(r) for r in chosen[split]},
            "windows": {k: asdict(w) if w else None for k, w in windows.items()},
            "scores": [_score_dict(s) for s in scores],
            "table": summarize(scores),
        }
        write_split(result, chosen[split], windows, scores, detectors, config, split, log)
        results[split] = result
    return results


def _jsonable(value: Any) -> Any:
    """Strict-JSON form: paths as strings, NaN/inf as None, numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value) if isinstance(value, Path) else value


def _run_meta(run: RunData) -> dict[str, Any]:
    meta = json.loads((Path(run.source) / "run.json").read_text()) if run.source else {}
    return {
        "kind": run.kind,
        "role": run.role,
        "seed": run.seed,
        "steps": len(run.steps),
        "toy_source_sha256": meta.get("toy_source_sha256"),
    }


def _score_dict(sc: RunScore) -> dict[str, Any]:
    out = asdict(sc)
    out["window"] = asdict(sc.window) if sc.window else None
    return out


# ---------------------------------------------------------------------------------------------- outputs
def split_markdown(result: dict[str, Any], windows: dict[str, Window | None], config: EvalConfig) -> str:
    """The markdown block of one split: both modes' tables and the runs' windows."""
    split = result["split"]
    kinds = {name: meta["kind"] for name, meta in result["runs"].items()}
    head = (  # the development block sits under docs/validation.md's own "Results" heading
        "### Results on the held-out runs (never used to choose a setting)\n\n" if split == "heldout" else ""
    )
    cal = ", ".join(result["calibrated_on"])
    return (
        head
        + "#### Default thresholds\n\n"
        + markdown_tables(result["table"], "default")
        + f"\n#### Baselines calibrated at {1000 * config.false_alarm_rate:g} false alarm per 1000 steps on the "
        + f"development controls ({cal}); fpmon's detectors unchanged (threshold log(1/α))\n\n"
        + markdown_tables(result["table"], "calibrated")
        + "\n#### Onsets and detection windows\n\n"
        + windows_markdown(windows, kinds)
    )


def write_split(
    result: dict[str, Any],
    runs: Sequence[RunData],
    windows: dict[str, Window | None],
    scores: Sequence[RunScore],
    detectors: Sequence[Detector],
    config: EvalConfig,
    split: Split,
    log: Callable[[str], None],
) -> None:
    """Write one split's results.json, table.md, evidence traces and plots; inject the table into the doc."""
    from .plots import plot_run, plot_summary

    out = config.out_dir(split)
    out.mkdir(parents=True, exist_ok=True)
    for pattern in STALE:
        for old in out.glob(pattern):
            old.unlink()
    (out / "results.json").write_text(json.dumps(_jsonable(result), indent=1, allow_nan=False))
    md = split_markdown(result, windows, config)
    (out / "table.md").write_text(md)
    alert_dets = [d for d in detectors if isinstance(d, FpmonDetector) and d.name in ("fpmon", "fpmon+judge")]
    (out / "traces").mkdir(exist_ok=True)
    controls = 0
    for run in runs:
        traces = {d.name: d.trace(run) for d in alert_dets}
        (out / "traces" / f"{run.name}.json").write_text(json.dumps({k: t.to_dict() for k, t in traces.items()}))
        if run.role == "control":
            controls += 1
            if controls > config.plot_controls:
                continue
        plot_run(run, [s for s in scores if s.run == run.name], windows[run.name], traces, out / f"{run.name}.png")
    plot_summary(scores, split, out / "summary.png")
    if config.write_doc:
        inject_doc(config.doc_path, split, md, log)
    log(f"wrote {out}: results.json, table.md, traces/, plots")


def inject_doc(doc: Path, split: Split, md: str, log: Callable[[str], None]) -> bool:
    """Write ``md`` between the split's markers in ``doc``. The held-out markers are created right after the
    development block's end marker when missing; returns False (and changes nothing) without a place to write."""
    if not doc.exists():
        return False
    text = doc.read_text()
    start, end = MARKERS[split]
    if start not in text or end not in text:
        dev_end = MARKERS["dev"][1]
        if split != "heldout" or dev_end not in text:
            log(f"{doc} has no {start} / {end} markers: table not written there")
            return False
        text = text.replace(dev_end, f"{dev_end}\n\n{start}\n{end}", 1)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{md}{end}{tail}")
    log(f"{split} tables written into {doc}")
    return True
