"""The e-detectors (monitor.detect.evidence, witness, streams): closed forms, the false-alarm guarantee on long
stationary streams, and every stream's alarm on a synthetic change of known size."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from monitor.detect.evidence import EDetectorConfig, ShiryaevRoberts, exceedance_log_evalues
from monitor.detect.streams import EvidenceConfig, EvidenceTracker
from monitor.detect.witness import block_means, conformal_quantile, value_exceedance, witness_exceedance


def test_exceedance_log_evalues_closed_form() -> None:
    # blocks with mean 0.5 and 0.0 against null rate 0.2, bet f: log(1 + f·0.3/0.2) + log(1 − f)
    got = exceedance_log_evalues([0.5, 0.0], 0.2, [0.5, 0.8])
    assert got == pytest.approx([math.log(1.75) + math.log(0.5), math.log(2.2) + math.log(0.2)], rel=1e-12)
    assert exceedance_log_evalues([], 0.2, [0.5]) == [0.0]
    assert exceedance_log_evalues([1.7, -3.0], 0.2, [0.5]) == exceedance_log_evalues([1.0, 0.0], 0.2, [0.5])
    with pytest.raises(ValueError, match="null_rate"):
        exceedance_log_evalues([0.1], 0.0, [0.5])


def test_shiryaev_roberts_recursion_and_mixture_closed_form() -> None:
    """M_t = e_t (1 + M_{t−1}) per bet; the detector reports log of their mean."""
    det = ShiryaevRoberts(EDetectorConfig(alpha=0.01, bets=(0.2, 0.6)))
    e = [(2.0, 3.0), (0.5, 0.25), (4.0, 1.0)]
    m = [0.0, 0.0]
    for step in e:
        m = [ei * (1 + mi) for ei, mi in zip(step, m, strict=True)]
        got = det.update([math.log(v) for v in step])
        assert got == pytest.approx(math.log(sum(m) / 2), rel=1e-12)
    assert det.alarm is False  # mean(6·1.5·... ) stays below 100
    det.update([math.log(1000.0), math.log(1000.0)])
    assert det.alarm is True
    state = json.loads(json.dumps(det.state_dict()))
    again = ShiryaevRoberts(EDetectorConfig(alpha=0.01, bets=(0.2, 0.6)))
    again.load_state_dict(state)
    assert again.log_value == det.log_value and again.alarm
    det.reset()
    assert det.log_value == -math.inf and not det.alarm
    with pytest.raises(ValueError, match="one per bet"):
        det.update([0.0])
    with pytest.raises(ValueError, match="alpha"):
        EDetectorConfig(alpha=0.0)


def test_average_run_length_under_the_null_is_at_least_one_over_alpha() -> None:
    """Fair bets (each block exceeds with probability exactly the null rate): the mean time to the first alarm
    is ≥ 1/α (Shin, Ramdas & Rinaldo, Thm 2.4). α = 0.05, so 1/α = 20 steps; 400 runs of at most 2000 steps."""
    rng = random.Random(0)
    cfg = EDetectorConfig(alpha=0.05)
    c, blocks, lengths = 0.15, 8, []
    for _ in range(400):
        det = ShiryaevRoberts(cfg)
        t = 0
        while t < 2000:
            t += 1
            means = [sum(rng.random() < c for _ in range(8)) / 8 for _ in range(blocks)]
            det.update(exceedance_log_evalues(means, c, cfg.bets))
            if det.alarm:
                break
        lengths.append(t)
    arl = sum(lengths) / len(lengths)
    assert arl >= 1 / cfg.alpha, arl
    # and the detector is not inert: a block rate of 0.5 instead of 0.15 alarms within 3 steps
    det = ShiryaevRoberts(cfg)
    steps = 0
    while not det.alarm and steps < 10:
        det.update(exceedance_log_evalues([0.5] * blocks, c, cfg.bets))
        steps += 1
    assert steps <= 3


def test_conformal_quantile_bounds_the_exceedance_rate() -> None:
    assert conformal_quantile(torch.arange(9.0), 0.1) == 8.0  # ⌈0.9 · 10⌉ = 9th smallest
    assert conformal_quantile(torch.arange(5.0), 0.1) == math.inf  # rank 6 > 5: nothing can exceed
    gen = torch.Generator().manual_seed(1)
    rates = []
    for _ in range(300):
        base, new = torch.randn(99, generator=gen), torch.randn(64, generator=gen)
        rates.append(float(value_exceedance(new, base, 0.1)[0].mean()))
    assert sum(rates) / len(rates) <= 0.1 + 0.01  # exchangeable draws exceed at rate ≤ β (+ Monte Carlo slack)
    assert sum(rates) / len(rates) >= 0.08  # and not much less: the quantile is not needlessly loose


def test_witness_exceedance_separates_a_new_cluster() -> None:
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(128, 16, generator=gen)
    recent = torch.cat([torch.randn(96, 16, generator=gen), 4 + 0.1 * torch.randn(32, 16, generator=gen)])
    step = torch.cat([torch.randn(48, 16, generator=gen), 4 + 0.1 * torch.randn(16, 16, generator=gen)])
    scores, w, _ = witness_exceedance(step, base, recent, gamma=1 / 32, beta=0.1)
    assert scores[48:].tolist() == [1.0] * 16  # every clustered sample exceeds
    assert float(scores[:48].mean()) < 0.25
    assert float(w[48:].min()) > float(w[:48].max())  # and ranks above every ordinary one
    assert block_means(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2) == [0.5, 1.0]
    with pytest.raises(ValueError, match="at least 2 samples"):
        witness_exceedance(step, base[:1], recent, 1.0, 0.1)


def _stream(seed: int, steps: int, change: int | None, fraction: float, n: int = 64, d: int = 16):
    """Stationary Gaussian batches; from ``change`` on, ``fraction`` of each block (spread over the batch) sits in
    a new cluster with reward 1 and judge 0 (others: reward = judge ~ U(0, 0.5))."""
    gen = torch.Generator().manual_seed(seed)
    centre = 3.0 * torch.ones(d) / math.sqrt(d) * 2
    for t in range(steps):
        z = torch.randn(n, d, generator=gen)
        r = 0.5 * torch.rand(n, generator=gen, dtype=torch.float64)
        judge = r.clone()
        if change is not None and t >= change:
            idx = torch.arange(n)[(torch.arange(n) % 8) < round(8 * fraction)]
            z[idx] = centre + 0.2 * torch.randn(len(idx), d, generator=gen)
            r[idx] = 1.0
            judge[idx] = 0.0
        yield t, z, r, judge


@pytest.mark.parametrize(
    "streams, evidence",
    [
        (("embedding_lagged",), "embedding"),
        (("embedding_reference",), "embedding"),
        (("reward_rise",), "reward"),
        (("judge_gap",), "reward"),
    ],
)
def test_every_stream_alarms_on_a_change_of_known_size_and_not_before(streams: tuple[str, ...], evidence: str) -> None:
    """25 % of every block jumps into a new cluster with a +1 reward (and judge 0) at step 30."""
    tracker = EvidenceTracker(EvidenceConfig(streams=streams))
    crossed = []
    for t, z, r, judge in _stream(3, 45, change=30, fraction=0.25):
        ev = tracker.observe(z, r, judge)
        if ev.embedding_crossed if evidence == "embedding" else ev.reward_crossed:
            crossed.append(t)
        assert set(ev.log_values) <= {*streams, "embedding", "reward"}
    assert crossed and 30 <= crossed[0] <= 34, crossed


def test_long_stationary_stream_false_alarm_rate_is_below_alpha() -> None:
    """2000 stationary steps with the default tolerance and α = 0.02 (so that a rate near α would be measurable
    in this many steps): crossings of each evidence (each followed by a restart) per step stay below α.

    ε covers the conditional fluctuation of the exceedance probability given a finite base window (about
    sqrt(β(1 − β)/m) = 0.019 for m = 256 samples): with ε = 0 the same stream crosses at about α, i.e. the
    exceedance test is valid only marginally, which is why the tolerance is not optional."""
    cfg = EvidenceConfig(alpha=0.02, streams=("embedding_lagged", "reward_rise"))
    tracker = EvidenceTracker(cfg)
    crossings = {"embedding": 0, "reward": 0}
    steps = 0
    for _, z, r, _ in _stream(4, 2000, change=None, fraction=0.0, n=32, d=8):
        ev = tracker.observe(z, r)
        crossings["embedding"] += ev.embedding_crossed
        crossings["reward"] += ev.reward_crossed
        steps += 1
    assert all(count / steps <= cfg.alpha for count in crossings.values()), (crossings, steps)


def test_state_round_trip_and_rebaseline() -> None:
    """A restored tracker continues identically; after rebaseline() the same persistent change stops alarming,
    while without it the restarted detector alarms again."""
    stream = list(_stream(5, 90, change=30, fraction=0.25))
    a = EvidenceTracker(EvidenceConfig())
    for _, z, r, _ in stream[:35]:
        a.observe(z, r)
    state = a.state_dict()
    b = EvidenceTracker.from_state_dict({"meta": json.loads(json.dumps(state["meta"])), "tensors": state["tensors"]})
    c = EvidenceTracker.from_state_dict({"meta": json.loads(json.dumps(state["meta"])), "tensors": state["tensors"]})
    c.rebaseline()
    again, after_rebaseline = [], []
    for t, z, r, _ in stream[35:]:
        ea, eb, ec = a.observe(z, r), b.observe(z, r), c.observe(z, r)
        assert ea.log_values == eb.log_values and ea.rates == eb.rates
        torch.testing.assert_close(ea.witness, eb.witness)
        if ea.embedding_crossed:
            again.append(t)
        if ec.embedding_crossed or ec.reward_crossed:
            after_rebaseline.append(t)
    assert again, "without a rebaseline the persistent change keeps alarming (after each restart)"
    assert after_rebaseline == []


def test_config_validation_names_what_to_change() -> None:
    with pytest.raises(ValueError, match="streams must name some of"):
        EvidenceConfig(streams=("nope",))
    with pytest.raises(ValueError, match="beta"):
        EvidenceConfig(beta=0.9, epsilon=0.2)
    with pytest.raises(ValueError, match="lag must be >= 1"):
        EvidenceConfig(lag=0)
    assert EvidenceConfig.from_dict(json.loads(json.dumps(EvidenceConfig().__dict__))) == EvidenceConfig()
