"""Overhead of the TRL hook on a training step: the toy GRPO run with the hook off, on, and on with the sidecar down.

Run::

    python benchmarks/bench_hook.py [--pin] [--design blocks|runs] [--steps 122] [--block 4] [--warmup 2]
                                    [--repeats 4] [--threads 1] [--modes up,down,...] [--json PATH]

The run is ``monitor.demo.toy``'s GRPO task (a tiny Llama, 64 completions of ≤ 16 tokens per step, CPU); the policy is
warmed up once and deep-copied for every run, so all runs start from the same weights with the same seed. Modes:

- ``off``: no hook;
- ``on, sidecar up``: ``FPEMonitorCallback`` and ``wrap_reward_funcs`` with a near-free bag-of-words embedder
  (the hook's machinery: recording, copying, queueing, encoding, HTTP, plus ≈1 ms of embedding), shipping to a
  real ``fpmon serve`` (SQLite) on loopback, started once for the whole benchmark; the client's default
  transport (``ClientConfig.transport="process"``: encoding, HTTP, retries and spool in a sender process);
- ``on, sidecar down``: the same, shipping to a loopback port nobody listens on (the client retries, then
  spools to disk);
- ``on, sidecar up, no embedding`` and ``on, sidecar down, no embedding``: the same with precomputed latents
  instead of an embedder: the machinery alone, with no embedding;
- ``…, thread transport``: the same with ``ClientConfig(transport="thread")`` — encoding, HTTP, retries and
  spool in a background thread of the training process (the design before the sender process): the baseline;
- ``on + policy embedder, sidecar up``: the hook with its default embedder (a frozen copy of the initial
  policy, ``monitor.embed.ModelEmbedder``): the machinery plus the embedding cost.

Modes are interleaved (the order rotates from repeat to repeat) so that drifts of the machine's load hit all
modes alike. With the process transport each run waits until the client's sender process is ready before
training starts (its imports are not a training step; the time is printed per run). Per training step
(between consecutive ``on_step_end`` events, the hook's own ``on_step_end`` included; the first ``--warmup``
steps of each run dropped) it records wall time, the training thread's CPU time (``time.thread_time``) and the
process's CPU time (``time.process_time``, which adds the client's background threads, not the sender
process). Reported per mode: medians over all kept steps of all repeats (IQR for wall time), overheads =
median(on) / median(off) − 1 (for wall time also the range of the per-repeat ratios, and the *paired*
overhead: the median over steps of wall(mode) / wall(off) at the same step of the same repeat, with a 95 %
bootstrap interval — every run trains the same steps, so pairing removes the step-to-step variation of the
work), the hook's own time on the training thread (reward recording + ``on_step_end``), the embedding time
per step spent in the client's background thread (``client.stats.embed_seconds``), and the sender process's
CPU time per step (``/proc``). Wall time is what training feels, but on a shared machine other processes' load
makes it noisy. The sidecar's compute worker runs on the same machine (in a real deployment it has its own);
``--pin`` puts it, and the sender process, on the last CPU and training on the others. The script prints a
Markdown table and exits 0 (it measures, it does not test).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from monitor.client import ClientConfig, MonitorClient
from monitor.demo.sidecar import SidecarProcess, free_port
from monitor.demo.toy.grpo import ToyRunConfig, build_grpo_trainer, build_policy
from monitor.trl import FPEMonitorCallback, wrap_reward_funcs

OFF, UP, DOWN, UP_EMBED = "off", "on, sidecar up", "on, sidecar down", "on + policy embedder, sidecar up"
DOWN_CONST = "on, sidecar down, no embedding"
UP_CONST = "on, sidecar up, no embedding"
UP_CONST_THREAD = "on, sidecar up, no embedding, thread transport"
DOWN_CONST_THREAD = "on, sidecar down, no embedding, thread transport"
SIDECAR_LOAD = "control: hook off, the sidecar busy with the same steps"
MODES = (OFF, UP, DOWN, UP_CONST, DOWN_CONST, UP_CONST_THREAD, DOWN_CONST_THREAD, UP_EMBED, SIDECAR_LOAD)
#: --modes keys
MODE_KEYS = {
    "off": OFF,
    "up": UP,
    "down": DOWN,
    "up-const": UP_CONST,
    "down-const": DOWN_CONST,
    "up-thread": UP_CONST_THREAD,
    "down-thread": DOWN_CONST_THREAD,
    "up-embed": UP_EMBED,
    "sidecar-load": SIDECAR_LOAD,
}
DOWN_MODES = (DOWN, DOWN_CONST, DOWN_CONST_THREAD)
CONST_MODES = (UP_CONST, DOWN_CONST, UP_CONST_THREAD, DOWN_CONST_THREAD)
THREAD_MODES = (UP_CONST_THREAD, DOWN_CONST_THREAD)


class ConstantLatents:
    """A zero-cost "embedder": the same precomputed (n, 64) latents for every batch of n texts. With it the
    hook's machinery (recording, copying, queueing, encoding, spool) is measured without any embedding."""

    def __init__(self, dim: int = 64) -> None:
        self.table = torch.randn(4096, dim, generator=torch.Generator().manual_seed(0))

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.table[: len(texts)]


class BagOfWords:
    """A near-free embedder: token counts over the toy vocabulary, texts → (n, V) (≈1 ms for 64 texts).
    It isolates the hook's machinery (recording, copying, queueing, HTTP or spool) from embedding cost."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.size = len(tokenizer)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        ids = self.tok(list(texts), add_special_tokens=False)["input_ids"]
        out = torch.zeros(len(ids), self.size)
        for i, row in enumerate(ids):
            out[i].index_add_(0, torch.tensor(row, dtype=torch.long), torch.ones(len(row)))
        return out


NEIGHBOUR = """
import http.client, json, sys, torch
from monitor.stepfile import StepPayload, encode_step
host, port, name, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
gen = torch.Generator().manual_seed(1)
z = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0))[:n].half()  # ConstantLatents' rows
texts = [f"answer {i}: " + "word " * 12 for i in range(n)]
conn = http.client.HTTPConnection(host, port, timeout=30)
conn.request("POST", "/v1/runs", body=json.dumps({"name": name, "latent_dim": 64, "config": {}}),
             headers={"Content-Type": "application/json"})
run_id = json.loads(conn.getresponse().read())["run_id"]
print("ready", flush=True)
for line in sys.stdin:
    step = int(line)
    body = encode_step(StepPayload(step, z, torch.randn(n, generator=gen), texts=texts))
    conn.request("POST", f"/v1/runs/{run_id}/steps", body=body, headers={"Content-Type": "application/octet-stream"})
    resp = conn.getresponse()
    assert resp.status == 202, resp.read()
    resp.read()
"""


class SidecarLoad(TrainerCallback):
    """The control mode: no hook; at the end of every step of an 'on' block a separate process (on the sidecar's
    CPUs when pinned) posts a step of the same shape, with the latents of ``ConstantLatents``, to the sidecar.
    It measures what the sidecar's work (and the posting) costs the training step from the neighbouring cores
    alone — in a deployment the sidecar runs elsewhere."""

    enabled = True

    def __init__(self, server_url: str, name: str, n: int, cpus: set[int] | None) -> None:
        host, port = server_url.removeprefix("http://").rsplit(":", 1)
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen(
            [sys.executable, "-c", NEIGHBOUR, host, port, name, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=pin,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.enabled and self.proc.stdin is not None:
            self.proc.stdin.write(f"{int(state.global_step)}\n")
            self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(60)


class BlockSwitch(TrainerCallback):
    """``--design blocks``: the hook is off for ``block`` steps, on for the next ``block``, and so on (decided at
    each step's start, so the reward wrappers and ``on_step_end`` of one step agree)."""

    def __init__(self, hook: TimedHook | SidecarLoad, block: int) -> None:
        self.hook = hook
        self.block = block

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.hook.enabled = (int(state.global_step) // self.block) % 2 == 1


class StepTimer(TrainerCallback):
    """Per training step, between consecutive ``on_step_end`` events (the first from ``on_train_begin``): wall
    time, CPU time of the training thread (``time.thread_time``: the hook's own work there, insensitive to other
    processes' load) and CPU time of the whole process (``time.process_time``: also the client's background
    thread). Registered after the hook, so the hook's ``on_step_end`` is inside the interval."""

    def __init__(self, hook: TimedHook | SidecarLoad | None = None) -> None:
        self.hook = hook
        self.enabled: list[bool] = []  # whether the hook was on during each step
        self.last = (0.0, 0.0, 0.0)
        self.wall: list[float] = []
        self.thread: list[float] = []
        self.process: list[float] = []

    @staticmethod
    def _now() -> tuple[float, float, float]:
        return time.perf_counter(), time.thread_time(), time.process_time()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last = self._now()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = self._now()
        self.enabled.append(self.hook is not None and self.hook.enabled)
        self.wall.append(now[0] - self.last[0])
        self.thread.append(now[1] - self.last[1])
        self.process.append(now[2] - self.last[2])
        self.last = now


class TimedHook(FPEMonitorCallback):
    """The hook, with the time it spends on the training thread (``on_step_end`` and the reward wrappers'
    recording) accumulated: wall time and CPU time of the thread."""

    wall_seconds = 0.0
    cpu_seconds = 0.0
    enabled = True  # False: the step passes as if there were no hook (--design blocks)

    def _timed(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            self.wall_seconds += time.perf_counter() - w0
            self.cpu_seconds += time.thread_time() - c0

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        if self.enabled:
            self._timed(super().on_step_end, *args, **kwargs)

    def record_batch(self, *args: Any, **kwargs: Any) -> None:  # called by the reward wrappers
        if self.enabled:
            self._timed(super().record_batch, *args, **kwargs)


def one_run(
    mode: str,
    repeat: int,
    cfg: ToyRunConfig,
    policy: Any,
    tok: Any,
    server_url: str,
    down_url: str,
    tmp: Path,
    sender_cpus: set[int] | None = None,
    warmup: int = 1,
    block: int | None = None,
    fixed_length: bool = True,
) -> dict[str, Any]:
    timer = StepTimer()
    model = copy.deepcopy(policy)
    client: MonitorClient | None = None
    hook: TimedHook | None = None
    load: SidecarLoad | None = None
    if mode == OFF:
        trainer = build_grpo_trainer(cfg, callbacks=[timer], model=model, tokenizer=tok, output_dir=tmp / "out")
    elif mode == SIDECAR_LOAD:
        load = SidecarLoad(server_url, f"bench-load-{repeat}", cfg.completions_per_step, sender_cpus)
        timer.hook = load
        switch = [BlockSwitch(load, block)] if block else []
        trainer = build_grpo_trainer(
            cfg, callbacks=[*switch, load, timer], model=model, tokenizer=tok, output_dir=tmp / "out"
        )
    else:
        url = down_url if mode in DOWN_MODES else server_url
        name = f"bench-{MODES.index(mode)}-{repeat}"
        transport = "thread" if mode in THREAD_MODES else "process"
        config = ClientConfig(spool_dir=tmp / f"spool-{name}", transport=transport, sender_cpus=sender_cpus)
        client = MonitorClient(url, run_name=name, config=config)
        started = time.perf_counter()
        while transport == "process" and client.sender_pid is None and time.perf_counter() - started < 120:
            time.sleep(0.01)  # the sender's start-up (imports) is not part of a training step
        sender_start_s = time.perf_counter() - started
        sender_cpu_start = sender_cpu_seconds(client)
        embedder: Any = None if mode == UP_EMBED else ConstantLatents() if mode in CONST_MODES else BagOfWords(tok)
        hook = TimedHook(client, embedder=embedder)
        timer.hook = hook
        switch = [BlockSwitch(hook, block)] if block else []
        trainer = build_grpo_trainer(
            cfg,
            callbacks=[*switch, hook, timer],
            reward_wrapper=lambda fs: wrap_reward_funcs(fs, hook),
            model=model,
            tokenizer=tok,
            output_dir=tmp / "out",
        )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if fixed_length:  # every completion max_completion_length tokens: the same work in every step
        trainer.generation_config.min_new_tokens = cfg.max_completion_length
        trainer.generation_kwargs["min_new_tokens"] = cfg.max_completion_length
    torch.manual_seed(cfg.seed)
    trainer.train()
    out: dict[str, Any] = {
        "mode": mode,
        "repeat": repeat,
        "wall": timer.wall[warmup:],
        "thread": timer.thread[warmup:],
        "process": timer.process[warmup:],
        "enabled": timer.enabled[warmup:],
        "all_wall": timer.wall,
        "all_enabled": timer.enabled,
    }
    if load is not None:
        load.close()
        n_on = max(1, sum(timer.enabled))
        out.update(
            flush_s=0.0,
            embed_s_per_step=0.0,
            hook_wall_s_per_step=0.0,
            hook_cpu_s_per_step=0.0,
            sender_cpu_s_per_step=0.0,
            sender_start_s=0.0,
            sent=n_on,
            spooled=0,
            alerts=0,
            hook_errors={},
        )
    if client is not None and hook is not None:
        t0 = time.perf_counter()
        client.flush(60)
        sender_cpu = sender_cpu_seconds(client) - sender_cpu_start
        stats = client.stats
        out.update(
            flush_s=time.perf_counter() - t0,
            embed_s_per_step=stats.embed_seconds / max(1, hook.stats.steps_shipped),
            hook_wall_s_per_step=hook.wall_seconds / max(1, sum(timer.enabled)),
            hook_cpu_s_per_step=hook.cpu_seconds / max(1, sum(timer.enabled)),
            sender_cpu_s_per_step=sender_cpu / max(1, sum(timer.enabled)),
            sender_start_s=sender_start_s,
            sent=stats.sent,
            spooled=stats.spooled,
            alerts=len(client.alerts()),
            hook_errors=dict(hook.stats.errors),
        )
        client.close(5)
    return out


def sender_cpu_seconds(client: MonitorClient) -> float:
    """CPU time (user + system) the client's sender process has used so far; 0 without one."""
    pid = client.sender_pid
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paired_overhead(results: list[dict[str, Any]], mode: str, rng: random.Random) -> tuple[float, float, float]:
    """Median over (repeat, step) of wall(mode) / wall(off) at the same step of the same repeat, minus 1, with
    a 95 % bootstrap interval. Every run trains the same steps from the same weights and seed, so pairing by
    step removes the step-to-step variation of the work (completion lengths) that the pooled medians keep."""
    ratios: list[float] = []
    for res in results:
        if res["mode"] != mode:
            continue
        for off in results:
            if off["mode"] == OFF and off["repeat"] == res["repeat"]:
                ratios += [a / b for a, b in zip(res["wall"], off["wall"], strict=False)]
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(1000))
    return statistics.median(ratios) - 1, boot[25] - 1, boot[974] - 1


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=122, help="training steps per run (--warmup dropped)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps of each run not timed")
    parser.add_argument("--repeats", type=int, default=4, help="runs per mode, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (intra-op)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the raw step times here")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin the sidecar and the client's sender process to the last CPU, and training (with the hook's "
        "threads) to the others: the sidecar as on its own machine, the sender on a core training does not use "
        "(as on a GPU node, which has cores to spare); needs ≥ 2 CPUs",
    )
    parser.add_argument(
        "--modes",
        default=",".join(MODE_KEYS),
        help=f"comma-separated modes to run (off is always run): {', '.join(MODE_KEYS)}",
    )
    parser.add_argument(
        "--design",
        choices=("runs", "blocks"),
        default="blocks",
        help="runs: one run per mode and repeat, compared with the 'off' runs; blocks: in every run the hook is "
        "off and on in alternating blocks of --block steps, compared within the run (no drift between runs)",
    )
    parser.add_argument("--block", type=int, default=4, help="--design blocks: steps per block")
    parser.add_argument(
        "--block-skip", type=int, default=1, help="--design blocks: first steps of each block not compared"
    )
    parser.add_argument(
        "--variable-length",
        action="store_true",
        help="let completions end at EOS (default: every completion has max_completion_length tokens, so every "
        "step does the same work)",
    )
    args = parser.parse_args(argv)
    if args.design == "blocks" and not 0 <= args.block_skip < args.block:
        parser.error("--block-skip must be ≥ 0 and < --block")
    unknown = set(args.modes.split(",")) - set(MODE_KEYS)
    if unknown:
        parser.error(f"unknown --modes {sorted(unknown)}; choose from {', '.join(MODE_KEYS)}")
    modes = tuple(m for m in MODES if m == OFF or m in {MODE_KEYS[k] for k in args.modes.split(",")})
    if args.design == "blocks":
        modes = tuple(m for m in modes if m != OFF)  # every run has its own off blocks
    if args.steps < args.warmup + 2 or args.repeats < 1 or args.warmup < 0:
        parser.error("--steps must be ≥ --warmup + 2, --repeats ≥ 1, --warmup ≥ 0")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    cfg = ToyRunConfig(seed=args.seed, max_steps=args.steps, progress_bar=False)
    t0 = time.perf_counter()
    policy, tok = build_policy(cfg)
    print(f"policy warmed up in {time.perf_counter() - t0:.1f} s; {cfg.completions_per_step} completions per step")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        db = f"sqlite:///{tmp / 'fpmon.db'}"
        sidecar_cpus: set[int] | None = None
        if args.pin:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) < 2:
                parser.error("--pin needs at least 2 CPUs")
            sidecar_cpus = {cpus[-1]}
            os.sched_setaffinity(0, set(cpus[:-1]))
            print(f"pinned: training and the hook on CPUs {cpus[:-1]}, the sidecar and the sender on CPU {cpus[-1]}")
        # `fpmon serve` pinned like the sender; the schema is created by `fpmon db upgrade` at start
        server = SidecarProcess(db, tmp / "server.log", extra_env={"OMP_NUM_THREADS": "1"}, cpus=sidecar_cpus)
        server.start(timeout_s=120)
        down_url = f"http://127.0.0.1:{free_port()}"  # nobody listens there
        try:
            for r in range(args.repeats):
                order = modes[r % len(modes) :] + modes[: r % len(modes)]
                for mode in order:
                    block = args.block if args.design == "blocks" else None
                    res = one_run(
                        mode,
                        r,
                        cfg,
                        policy,
                        tok,
                        server.url,
                        down_url,
                        tmp,
                        sidecar_cpus,
                        args.warmup,
                        block,
                        not args.variable_length,
                    )
                    med = statistics.median(res["wall"])
                    print(f"repeat {r} {mode:34s} median step {1000 * med:7.1f} ms", flush=True)
                    results.append(res)
        finally:
            server.stop()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    if args.design == "blocks":
        print_blocks_table(results, modes, args, cfg)
        return 0

    def pooled(mode: str, key: str) -> list[float]:
        return [x for res in results if res["mode"] == mode for x in res[key]]

    off = {key: statistics.median(pooled(OFF, key)) for key in ("wall", "thread", "process")}
    load = os.getloadavg()
    print()
    print(f"torch {torch.__version__}, {args.threads} torch thread(s), {os.cpu_count()} CPU cores, load average now ")
    print(
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min); {args.repeats} repeats × "
        f"{args.steps - args.warmup} timed "
    )
    print(f"steps per mode; {cfg.completions_per_step} completions per step")
    print()
    print(
        "| mode | wall ms/step, median (IQR) | wall overhead (per repeat) | paired wall overhead [95 % CI] | "
        "training-thread CPU ms/step | its overhead | process CPU ms/step | its overhead | "
        "hook on the training thread, ms/step | embedding ms/step (background) | sender process CPU ms/step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rng = random.Random(0)
    for m in modes:
        q1, med, q3 = quartiles(pooled(m, "wall"))
        thread = statistics.median(pooled(m, "thread"))
        proc = statistics.median(pooled(m, "process"))
        runs = [res for res in results if res["mode"] == m]
        if m == OFF:
            over = paired = t_over = p_over = hook_ms = embed = sender = "—"
        else:
            ratios = [
                statistics.median(res["wall"]) / statistics.median(o["wall"]) - 1
                for res in runs
                for o in results
                if o["mode"] == OFF and o["repeat"] == res["repeat"]
            ]
            over = f"{100 * (med / off['wall'] - 1):+.1f} % ({100 * min(ratios):+.0f} … {100 * max(ratios):+.0f} %)"
            t_over = f"{100 * (thread / off['thread'] - 1):+.1f} %"
            p_over = f"{100 * (proc / off['process'] - 1):+.1f} %"
            hook_wall = 1000 * statistics.mean(res["hook_wall_s_per_step"] for res in runs)
            hook_cpu = 1000 * statistics.mean(res["hook_cpu_s_per_step"] for res in runs)
            hook_ms = f"{hook_cpu:.2f} CPU, {hook_wall:.2f} wall"
            embed = f"{1000 * statistics.mean(res['embed_s_per_step'] for res in runs):.1f}"
            sender_ms = 1000 * statistics.mean(res["sender_cpu_s_per_step"] for res in runs)
            sender = "— (thread)" if m in THREAD_MODES else f"{sender_ms:.1f}"
            p_med, p_lo, p_hi = paired_overhead(results, m, rng)
            paired = f"{100 * p_med:+.1f} % [{100 * p_lo:+.1f}, {100 * p_hi:+.1f}]"
        print(
            f"| {m} | {1000 * med:.0f} ({1000 * q1:.0f}–{1000 * q3:.0f}) | {over} | {paired} | {1000 * thread:.0f} | "
            f"{t_over} | {1000 * proc:.0f} | {p_over} | {hook_ms} | {embed} | {sender} |"
        )
    print()
    for res in results:
        if res["mode"] != OFF:
            print(
                f"repeat {res['repeat']} {res['mode']}: sent {res['sent']}, spooled {res['spooled']}, "
                f"final flush {res['flush_s']:.2f} s, sender ready {res['sender_start_s']:.2f} s after the client "
                f"was created, hook errors {res['hook_errors'] or 'none'}"
            )
    return 0


def block_ratios(res: dict[str, Any], block: int, skip: int, warmup: int) -> list[float]:
    """Per on-block of one run: mean step time of the block / mean of the off blocks before and after it (the
    neighbours cancel a linear drift of the machine's speed). The first ``skip`` steps of each block and the
    first ``warmup`` steps of the run are left out (the previous block's background work spills into them)."""
    blocks: dict[int, list[float]] = {}
    for k, wall in enumerate(res["all_wall"]):
        if k >= warmup and k % block >= skip:
            blocks.setdefault(k // block, []).append(wall)
    ratios = []
    for b, walls in blocks.items():
        if b % 2 == 1 and b - 1 in blocks and b + 1 in blocks:
            off = statistics.mean(blocks[b - 1] + blocks[b + 1])
            ratios.append(statistics.mean(walls) / off)
    return ratios


def print_blocks_table(results: list[dict[str, Any]], modes: tuple[str, ...], args: Any, cfg: ToyRunConfig) -> None:
    rng = random.Random(0)
    load = os.getloadavg()
    print()
    print(
        f"torch {torch.__version__}, {args.threads} torch thread(s), {os.cpu_count()} CPU cores, load average now "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; design blocks: {args.repeats} runs × {args.steps} steps "
        f"per mode, hook off/on in blocks of {args.block} (first {args.block_skip} of each block and "
        f"{args.warmup} warm-up steps not compared); {cfg.completions_per_step} completions per step, "
        f"{'variable' if args.variable_length else 'fixed'} length"
    )
    print()
    print(
        "| mode | off steps, ms (median) | on steps, ms (median) | overhead, mean of block ratios [95 % CI] | "
        "blocks | hook on the training thread, ms/step | embedding ms/step (background) | "
        "sender process CPU ms/step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for m in modes:
        runs = [res for res in results if res["mode"] == m]
        ratios = [x for res in runs for x in block_ratios(res, args.block, args.block_skip, args.warmup)]
        on = [w for res in runs for w, e in zip(res["wall"], res["enabled"], strict=True) if e]
        off = [w for res in runs for w, e in zip(res["wall"], res["enabled"], strict=True) if not e]
        boot = sorted(statistics.mean(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
        mean = statistics.mean(ratios) - 1
        hook_wall = 1000 * statistics.mean(res["hook_wall_s_per_step"] for res in runs)
        hook_cpu = 1000 * statistics.mean(res["hook_cpu_s_per_step"] for res in runs)
        embed = 1000 * statistics.mean(res["embed_s_per_step"] for res in runs)
        sender_ms = 1000 * statistics.mean(res["sender_cpu_s_per_step"] for res in runs)
        sender = "— (thread)" if m in THREAD_MODES else f"{sender_ms:.1f}"
        hook_ms, embed_ms = f"{hook_cpu:.2f} CPU, {hook_wall:.2f} wall", f"{embed:.1f}"
        if m == SIDECAR_LOAD:
            hook_ms = embed_ms = sender = "— (no hook)"
        print(
            f"| {m} | {1000 * statistics.median(off):.1f} | {1000 * statistics.median(on):.1f} | "
            f"{100 * mean:+.1f} % [{100 * (boot[50] - 1):+.1f}, {100 * (boot[1949] - 1):+.1f}] | {len(ratios)} | "
            f"{hook_ms} | {embed_ms} | {sender} |"
        )
    print()
    for res in results:
        print(
            f"repeat {res['repeat']} {res['mode']}: sent {res['sent']}, spooled {res['spooled']}, alerts "
            f"{res.get('alerts', 0)}, final flush "
            f"{res['flush_s']:.2f} s, sender ready {res['sender_start_s']:.2f} s after the client was created, "
            f"hook errors {res['hook_errors'] or 'none'}"
        )


if __name__ == "__main__":
    sys.exit(main())
