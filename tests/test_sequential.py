"""Seeds until decided (harness.results.sequential): the looks, the Lan-DeMets O'Brien-Fleming boundaries, and by
simulation the per-gain false-positive rate, power and seeds used of `--seeds auto:10` from 3 seeds (looks at 3, 6
and 10 seeds), every look read by `decide` at its `levels` level as the cell reads it, and the cell stopped as
harness.pipeline.Looks stops it: once decided, or at a look that more looks follow once `futile(gain, 10)`, or at
10 seeds. The simulation also drives Looks itself (its bootstrap gain replaced by the simulated one) on the first
10 gains of each batch and up to 5 more that ran to 10 seeds, and checks that it stops at the same look with the
same verdict (101 cells: 42 decided, 20 futile, 39 at 10 seeds).

The simulated gains have the grid's structure: per-seed gains g_j = gain + c + e_j, c ~ N(0, sc^2) the test-set
noise the seeds share (the same test set at every look), e_j ~ N(0, ss^2) the seed's own (training and its own
test-set noise); margin 0.02. Measured by the simulation test below (1,600 null gains per setting, 300 per power
figure):

    (sc, ss)                          (0.01, 0.05) seeds    (0.03, 0.03)          (0.05, 0.01) test set
    false positives per gain
      auto:10                         4.8%                  4.7%                  5.2%
      auto:10, naive 95% every look   9.9%                  6.6%                  5.7%
      fixed 3 seeds                   4.0%                  2.4%                  4.6%
    power at gain 0.05: auto:10 / fixed 3 seeds     72% / 18%     32% / 16%     18% / 17%
    power at gain 0.1: auto:10 / fixed 3 seeds      100% / 49%    88% / 62%     49% / 48%
    mean seeds of auto:10 at gain 0 / 0.05 / 0.1    9.8 / 9.2 / 7.2     7.5 / 8.7 / 7.2     5.8 / 6.7 / 7.7
      without the futility stop                     9.9 / 9.3 / 7.2     10.0 / 9.5 / 7.2    9.9 / 9.7 / 8.7

auto:10 keeps 5% per gain and has nearly the power of 10 fixed seeds (69% / 35% / 17% at 0.05 by a 100,000-gain
vectorised copy), where repeated 95% looks give up to twice the false positives (the more the seed noise dominates,
the less correlated the looks). No gain stops early as `equivalent` (a 10-seed interval is +-0.04 or wider, twice
the margin), so where the seeds' noise dominates a gain with no effect takes all 10 seeds. The futility stop
(sequential.futile: even the far edge of the look's 95% interval would not be decided at 10 seeds) saves seeds where
the test set's noise dominates (5.8 instead of 9.9 at gain 0) and costs no power in these settings; it never adds a
false positive. Read at the observed gain instead (the first version), it ended almost every null gain at 3 seeds
but cost 13-40 points of power at a gain of 0.05 (68% to 33% where the seeds dominate).
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from harness.results import moderation
from harness.results.sequential import DECIDED, boundaries, decide, futile, levels, looks, spending

INITIAL, MOST, MARGIN = 3, 10, 0.02
SETTINGS = {"seeds dominate": (0.01, 0.05), "balanced": (0.03, 0.03), "test set dominates": (0.05, 0.01)}


def test_looks():
    assert looks(3, 10) == [3, 6, 10]
    assert looks(3, 6) == [3, 6]
    assert looks(3, 12) == [3, 6, 9, 12]
    assert looks(3, 3) == [3]
    assert looks(3, 4) == [3, 4]
    assert looks(3, 5) == [3, 5]
    assert looks(1, 3) == [1, 2, 3]
    for initial, most in ((3, 2), (0, 5), (-1, 3)):
        with pytest.raises(ValueError, match="--seeds auto:MAX"):
            looks(initial, most)


def test_spending():
    t = np.linspace(0.01, 1, 100)
    spent = [spending(x) for x in t]
    assert np.all(np.diff(spent) > 0)
    assert spending(1.0) == pytest.approx(0.05, abs=1e-12)
    assert spending(1.0, 0.01) == pytest.approx(0.01, abs=1e-12)
    assert spending(0.1) < 1e-9  # O'Brien-Fleming: almost nothing spent early
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError):
            spending(bad)


def test_boundaries_published():
    """K = 1 is the fixed design; the first boundary is z_{0.975} / sqrt(t_1) (all of alpha(t_1) spent on one
    normal). The recursion against gsDesign's published Lan-DeMets O'Brien-Fleming bounds (sfLDOF, one-sided 0.025,
    equally spaced: its spending is 2 - 2 Phi(z_{1-0.025/2} / sqrt(t)) per side; Jennison and Turnbull's tables
    agree). The figures 2.797, 1.977 (K = 2) and 3.471, 2.454, 2.004 (K = 3) that are sometimes quoted for this
    design are the original O'Brien-Fleming (1979) boundaries C sqrt(K / k), a different design."""
    assert boundaries([1.0]) == pytest.approx([1.959964], abs=1e-5)
    assert boundaries([0.3, 0.6, 1.0])[0] == pytest.approx(1.959964 / np.sqrt(0.3), abs=1e-6)
    per_side = lambda t, alpha: 2 * spending(t, alpha)
    published = {2: [2.9626, 1.9686], 3: [3.7103, 2.5114, 1.9930], 4: [4.3326, 2.9631, 2.3590, 2.0141],
                 5: [4.8769, 3.3569, 2.6803, 2.2898, 2.0310]}
    for k, bounds in published.items():
        assert boundaries(np.arange(1, k + 1) / k, 0.025, spend=per_side) == pytest.approx(bounds, abs=5e-4)
    # this module's two-sided spending (alpha 0.05 over both sides) at the same looks
    assert boundaries([0.5, 1]) == pytest.approx([2.7718, 1.9793], abs=5e-4)
    assert boundaries([1 / 3, 2 / 3, 1]) == pytest.approx([3.3948, 2.4067, 2.0152], abs=5e-4)
    assert boundaries([0.25, 0.5, 0.75, 1]) == pytest.approx([3.9199, 2.7740, 2.2982, 2.0426], abs=5e-4)
    assert boundaries([0.3, 0.6, 1.0]) == boundaries([0.3, 0.6, 1.0])  # deterministic
    for bad in ([0.5, 0.9], [0.6, 0.3, 1.0], [0.0, 1.0], []):
        with pytest.raises(ValueError):
            boundaries(bad)


@pytest.mark.parametrize("fractions", [[1 / 3, 2 / 3, 1], [0.25, 0.5, 0.75, 1], [0.3, 0.6, 1.0]])
def test_boundaries_monte_carlo(fractions):
    """Brownian motion at the looks: the probability of crossing by look k is alpha(t_k), within 4.5 SE."""
    t = np.asarray(fractions)
    steps = np.random.default_rng(7).standard_normal((400_000, len(t))) * np.sqrt(np.diff(t, prepend=0))
    z = np.cumsum(steps, axis=1) / np.sqrt(t)
    crossed = np.maximum.accumulate(np.abs(z) >= np.asarray(boundaries(t)), axis=1).mean(axis=0)
    expected = np.array([spending(x) for x in t])
    assert np.all(np.abs(crossed - expected) <= 4.5 * np.sqrt(expected * (1 - expected) / len(z)) + 1e-5)


def test_levels():
    planned = levels(3, 10)
    assert [n for n, _ in planned] == [3, 6, 10]
    bounds = boundaries([0.3, 0.6, 1.0])
    assert [lv for _, lv in planned] == pytest.approx([2 * sps.norm.cdf(c) - 1 for c in bounds], abs=1e-12)
    assert [lv for _, lv in planned] == pytest.approx([0.99965, 0.98874, 0.95437], abs=1e-5)
    assert levels(3, 3) == [(3, pytest.approx(0.95, abs=1e-9))]
    for initial, most in ((3, 4), (3, 12), (2, 20), (1, 5)):
        lv = [x for _, x in levels(initial, most)]
        assert np.all(np.diff(lv) < 0) and lv[-1] > 0.95


def test_decide():
    """With no prior (d0 = 0) the moderated variance is the gain's own seed variance on k - 1 df; one seed falls
    back to the normal interval of se_boot."""
    assert moderation.moderated_variance(0.004, 2, 0.0, 0.0) == (pytest.approx(0.004), 2.0)
    gain = {"mean": 0.03, "per_seed": [0.01, 0.05, 0.03], "se_boot": 0.02, "se_seeds": [0.025] * 3, "margin": 0.02}
    read = decide(gain, 0.99)
    same = moderation.moderated_gain(gain, 0.0, 0.0, 0.99)
    assert read["seeds"] == 3 and read["level"] == 0.99
    assert [read[f] for f in ("mean", "ci_low", "ci_high", "verdict", "p_value")] == \
        [same[f] for f in ("mean", "ci_low", "ci_high", "verdict", "p_value")]
    assert read["verdict"] == "inconclusive"
    one = decide({"mean": 0.03, "per_seed": [0.03], "se_boot": 0.01}, 0.95)
    assert (one["ci_low"], one["ci_high"]) == pytest.approx((0.03 - 1.959964 * 0.01, 0.03 + 1.959964 * 0.01))
    assert one["verdict"] == "positive" and one["p_value"] == pytest.approx(2 * sps.norm.sf(3))
    tight = {"mean": 0.001, "per_seed": [0.0, 0.002], "se_boot": 0.001, "margin": 0.02}  # no se_seeds: se_boot
    assert decide(tight, 0.95)["verdict"] == "equivalent"
    assert decide({**tight, "margin": 0.0}, 0.95)["verdict"] == "inconclusive"  # margin absent or 0: never equivalent
    assert DECIDED == ("positive", "negative", "equivalent")


def _gain(per_seed: np.ndarray, sc: float, ss: float) -> dict:
    """A recorded gain whose se_boot and se_seeds hold the shared test-set noise sc and each seed's own test-set
    noise (half the seed term's variance) as the bootstrap sees them, so that shared_se recovers sc."""
    k, own2 = len(per_seed), ss**2 / 2
    return {"mean": float(per_seed.mean()), "per_seed": per_seed.tolist(), "se_boot": float(np.sqrt(sc**2 + own2 / k)),
            "se_seeds": [float(np.sqrt(sc**2 + own2))] * k, "margin": MARGIN}


def _readings(plan, per_seed: np.ndarray, sc: float, ss: float) -> list[tuple[dict, dict, bool]]:
    """(gain, decide's reading, futile) at each look of `plan` ((seeds, level) pairs) up to the first decided one;
    `futile` as harness.pipeline.Looks sets it: the look undecided, looks following, and sequential.futile(gain,
    MAX). The futility stop ends the cell at the first futile look; without it the cell looks on."""
    out = []
    for j, (k, level) in enumerate(plan):
        gain = _gain(per_seed[:k], sc, ss)
        read = decide(gain, level)
        out.append((gain, read, j + 1 < len(plan) and read["verdict"] not in DECIDED and futile(gain, plan[-1][0])))
        if read["verdict"] in DECIDED:
            break
    return out


def _at_95(gain: dict, read: dict) -> str:
    """The verdict of a look at 95% from a reading at a higher level (so that the naive rule and the fixed
    design cost no further intervals): the p-value does not depend on the level (p < 0.05 exactly when the 95%
    interval excludes zero), and the 95% interval lies inside +-margin exactly when the zero-centred mixture's
    tail beyond margin - |mean| is below 2.5%. Checked against decide(gain, 0.95) in the simulation."""
    mean, k = gain["mean"], len(gain["per_seed"])
    if read["p_value"] < 0.05:
        return "positive" if mean > 0 else "negative"
    scale, room = float(np.std(gain["per_seed"], ddof=1) / np.sqrt(k)), gain["margin"] - abs(mean)
    tail = moderation.mixture_sf(room, moderation.shared_se(gain), scale, k - 1)[0] if room > 0 else 1.0
    return "equivalent" if tail < 0.025 else "inconclusive"


def _draws(sc: float, ss: float, effect: float, n: int, seed: int) -> np.ndarray:
    """n gains' per-seed gains at MOST seeds: effect + shared test-set noise + each seed's own."""
    rng = np.random.default_rng(seed)
    return effect + rng.normal(0, sc, (n, 1)) + rng.normal(0, ss, (n, MOST))


def _simulate(sc: float, ss: float, effect: float, n: int, seed: int, check: int = 0) -> dict:
    """{rule: (verdicts, seeds used)} of n gains: `auto` (this module's looks and levels, every look read by
    decide, stopped when decided or futile: the procedure of harness.pipeline.Looks), `spending` (the same without
    the futility stop), `naive` (the looks at 95%, no futility stop) and `fixed3` (the first look at 95%), on the
    same draws; the 95% readings of the first `check` gains are checked against decide."""
    draws, plan = _draws(sc, ss, effect, n, seed), levels(INITIAL, MOST)
    out = {"auto": [], "spending": [], "naive": [], "fixed3": []}
    for i, g in enumerate(draws):
        readings = _readings(plan, g, sc, ss)
        naive = [(_at_95(gain, read), read["seeds"]) for gain, read, _ in readings]
        if i < check:
            assert [v for v, _ in naive] == [decide(gain, 0.95)["verdict"] for gain, _, _ in readings]
        stop = next((read for _, read, stop in readings if stop), readings[-1][1])
        out["auto"].append((stop["verdict"], stop["seeds"]))
        out["spending"].append((readings[-1][1]["verdict"], readings[-1][1]["seeds"]))
        out["naive"].append(next((r for r in naive if r[0] in DECIDED), naive[-1]))
        out["fixed3"].append(naive[0])
    return {rule: (np.array([v for v, _ in runs]), np.array([k for _, k in runs])) for rule, runs in out.items()}


def _pipeline_stops(per_seed: np.ndarray, sc: float, ss: float, monkeypatch) -> tuple[str, int, str]:
    """(verdict, seeds, how it stopped) of harness.pipeline.Looks driven round by round as train_cell drives it,
    its bootstrap gain replaced by the simulated gain of the seeds trained so far."""
    from harness import pipeline

    monkeypatch.setattr(pipeline.bootstrap, "arms", lambda y_true, direct, intermediate: len(direct))
    monkeypatch.setattr(pipeline.bootstrap, "gain", lambda k, metric, seed, margin: _gain(per_seed[:k], sc, ss))
    cell = pipeline.Looks("simulated", INITIAL, MOST)
    seeds = list(range(INITIAL))
    while True:
        arrays = {"y_true/en": None, "direct/en": seeds, "intermediate/en": None}
        more = cell(seeds, arrays, "accuracy", "en", MARGIN)
        if not more:
            break
        seeds += more
    block = cell.apply({"gain": {}})["sequential"]
    return cell.looks[-1]["verdict"], len(seeds), block["stopped"]


def _check_looks(draws: np.ndarray, auto: tuple, sc: float, ss: float, stops: dict, monkeypatch) -> None:
    """harness.pipeline.Looks on the first 10 gains of `draws` and the first 5 that the simulation ran to MOST
    seeds stops where `auto` (the simulation's (verdicts, seeds used)) says; `stops` counts how they stopped."""
    for j in list(range(10)) + [int(j) for j in np.flatnonzero(auto[1] == MOST)[:5] if j >= 10]:
        verdict, k, stopped = _pipeline_stops(draws[j], sc, ss, monkeypatch)
        stops[stopped] += 1
        assert (verdict, k) == (auto[0][j], auto[1][j]), (j, stopped, sc, ss)


def _false_positives(verdicts: np.ndarray) -> float:
    return float(np.mean((verdicts == "positive") | (verdicts == "negative")))


@pytest.mark.slow
def test_simulation_false_positives_power_seeds(monkeypatch):
    g = np.random.default_rng(0).normal(0, 0.05, MOST)
    assert moderation.shared_se(_gain(g, 0.03, 0.05)) == pytest.approx(0.03)
    lines, stops = [], {"decided": 0, "futile": 0, "max seeds": 0}
    for i, (name, (sc, ss)) in enumerate(SETTINGS.items()):
        null = _simulate(sc, ss, 0.0, 1600, seed=100 + i, check=100)
        fp = {rule: _false_positives(v) for rule, (v, _) in null.items()}
        assert 0.025 <= fp["spending"] <= 0.06, (name, fp)
        assert fp["auto"] <= fp["spending"] <= fp["naive"], (name, fp)  # futility only stops without a verdict
        if name == "seeds dominate":
            assert fp["naive"] > 0.07, fp  # repeated 95% looks: 10.2% with 100,000 gains
        power, seeds = {}, {rule: [null[rule][1].mean()] for rule in ("auto", "spending")}
        _check_looks(_draws(sc, ss, 0.0, 1600, 100 + i), null["auto"], sc, ss, stops, monkeypatch)
        for effect in (0.05, 0.1):
            runs = _simulate(sc, ss, effect, 300, seed=200 + 10 * i + int(effect * 100))
            _check_looks(_draws(sc, ss, effect, 300, 200 + 10 * i + int(effect * 100)), runs["auto"], sc, ss, stops,
                         monkeypatch)
            power[effect] = {rule: float(np.mean(v == "positive")) for rule, (v, _) in runs.items()}
            for rule, used in seeds.items():
                used.append(runs[rule][1].mean())
            # on the same draws the futility stop only ends a cell sooner, without a verdict
            assert np.all(runs["auto"][1] <= runs["spending"][1]), (name, effect)
            assert np.all((runs["auto"][0] == "positive") <= (runs["spending"][0] == "positive")), (name, effect)
        if name == "seeds dominate":
            assert power[0.05]["spending"] > power[0.05]["fixed3"] + 0.3, power
            assert power[0.1]["spending"] > 0.95, power
        lines.append(f"{name} (sc {sc}, ss {ss}), auto / without futility / fixed 3: false positives "
                     f"{fp['auto']:.1%} / {fp['spending']:.1%} / {fp['fixed3']:.1%} (naive {fp['naive']:.1%}); "
                     + "; ".join(f"power {e} " + " / ".join(f"{power[e][r]:.0%}" for r in ("auto", "spending",
                                                                                             "fixed3"))
                                 for e in (0.05, 0.1))
                     + "; mean seeds (gain 0 / 0.05 / 0.1) " + " / ".join(f"{x:.1f}" for x in seeds["auto"])
                     + " without " + " / ".join(f"{x:.1f}" for x in seeds["spending"]))
    assert all(stops.values()), stops  # Looks checked on every way a cell stops
    print("\n" + "\n".join(lines) + f"\nLooks itself, cells stopped: {stops}")
