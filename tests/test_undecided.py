"""The cascade's rule at an undecided stage (msrs.decisions, undecided="abstain" | "fall_through"): the routing
arithmetic on a bound whose margins are known exactly, the fixed-n decision on hand-made counts, and the option's
path from `msrs certify --undecided` to the log's sidecar. Validity: tests/test_validity.py."""
import json

import numpy as np
import pytest

from msrs import checks, decisions, stopping
from msrs.cli import main
from msrs.config import CertifyConfig, from_options

MARGIN = 0.01


def plus_minus(successes, trials, level):
    """A toy bound object: (phat - 0.01, phat + 0.01), whatever the level, so the routing is plain arithmetic."""
    s, t = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (successes, trials))
    phat = s / np.maximum(t, 1.0)
    return phat - MARGIN, phat + MARGIN


# (successes, trials, n_max) -> (route under "abstain", route under "fall_through"), worked by hand with
# lower = s / t - 0.01, upper = s / t + 0.01, and without futility every remaining sample may be a success
# (best lower: (s + n_max - t) / n_max - 0.01) or a failure (worst upper: s / n_max + 0.01):
CASES = [
    ((5200, 10_000, 20_000), ("certify", "certify")),  # lower 0.51 >= 1/2
    ((4850, 10_000, 20_000), ("fall_through", "fall_through")),  # upper 0.495 < 1/2
    ((4950, 10_000, 10_000), ("undecided", "fall_through")),  # budget spent, 0.485 .. 0.505
    ((4980, 10_000, 10_040), ("undecided", "fall_through")),  # best lower 0.49, worst upper 0.506: stuck
    ((4920, 10_000, 10_100), ("continue", "fall_through")),  # cannot certify (0.487), may still fall (0.497)
    ((4990, 10_000, 12_000), ("continue", "continue")),  # may still certify (best lower 0.576)
]


@pytest.mark.parametrize("counts, expected", CASES)
def test_routing_of_an_undecided_stage(counts, expected):
    s, t, n_max = counts
    for rule, want in zip(decisions.UNDECIDED_RULES, expected):
        got = stopping.route_stage(s, t, n_max, 0.001, bound=plus_minus, futility=None, undecided=rule)
        assert got == want, (counts, rule, got)


def test_goes_on():
    table = {("certify", "abstain"): False, ("undecided", "abstain"): False, ("fall", "abstain"): True,
             ("certify", "fall_through"): False, ("undecided", "fall_through"): True, ("fall", "fall_through"): True}
    for (outcome, rule), want in table.items():
        assert decisions.goes_on(outcome, rule) is want, (outcome, rule)
    with pytest.raises(checks.ArgumentValueError, match="^undecided: "):
        decisions.goes_on("fall", "fall-through")


def test_fixed_n_cascade_on_an_undecided_stage():
    """Stage 0 (sigma 0.5): class 1 selected, estimation votes 400 / 1040 / 560 of 2000: class 1's two-sided
    interval at 2 * alpha / 4 is [0.485, 0.555], undecided. Stage 1 (sigma 0.25): 2000 of 2000 for class 1.
    "abstain" abstains at stage 0. "fall_through" certifies class 1 at stage 1, its radius the smaller of its own,
    0.25 PhiInv(CP_lower(2000 / 2000, alpha / 2)) = 0.685, and stage 0's cap 0.5 (PhiInv(1/2) - PhiInv(pB)), pB
    the off-class bound over the groups {0} and {2} (pooled on the selection counts 30 / 40 / 30), about 0.315:
    the cap, about 0.24, is what limits it. With class 2 at 960 votes (pB > 1/2: stage 0 may be confident in
    class 2, which would be G(x)) the cascade goes on and abstains."""
    from scipy.stats import norm

    sigmas, alpha = [0.5, 0.25], 0.004
    c0 = np.array([[30, 40, 30], [0, 100, 0]])
    c = np.array([[400, 1040, 560], [0, 2000, 0]])
    assert decisions.stage_outcome(c0[0], c[0], alpha / 4)[0] == "undecided"
    abstain = decisions.cascade_certify_from_counts(c0, c, sigmas, alpha)
    assert (abstain.prediction, abstain.last) == (-1, 0)
    d = decisions.cascade_certify_from_counts(c0, c, sigmas, alpha, undecided="fall_through")
    assert (d.prediction, d.stage) == (1, 1)
    own = 0.25 * norm.ppf((alpha / 2) ** (1 / 2000))  # Clopper-Pearson lower bound of 2000 / 2000, closed form
    p_b = decisions.off_class_upper(c0[0], c[0], 1, alpha / 4)
    assert 560 / 2000 < p_b < 0.5
    assert d.radius == pytest.approx(-0.5 * norm.ppf(p_b), rel=1e-8) and d.radius < own - 0.3
    c = np.array([[0, 1040, 960], [0, 2000, 0]])
    wrong_class_near_half = decisions.cascade_certify_from_counts(c0, c, sigmas, alpha, undecided="fall_through")
    assert (wrong_class_near_half.prediction, wrong_class_near_half.last) == (-1, 1)


def test_config_checks_and_records_the_rule():
    with pytest.raises(checks.ArgumentValueError, match="^undecided: expected one of"):
        CertifyConfig((0.5, 0.25), undecided="fall")
    with pytest.raises(checks.ArgumentValueError, match="^undecided: only for the cascade"):
        CertifyConfig((0.25,), undecided="fall_through")
    assert "undecided" not in CertifyConfig((0.5, 0.25)).record()  # logs written before the option resume
    assert CertifyConfig((0.5, 0.25), undecided="fall_through").record()["undecided"] == "fall_through"
    assert from_options(sigmas=[0.5, 0.25], undecided="fall_through").undecided == "fall_through"


def test_cli_option_reaches_the_sidecar(tmp_path, capsys):
    """`msrs certify --undecided fall-through` on two sigmas: the sidecar records the rule, and a run with the
    default rule refuses to resume that log (the certificates differ)."""
    import torch

    path = tmp_path / "linear.ts"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))), str(path))
    args = ["certify", "--dataset", "digits", "--classifier", str(path), "--sigma", "0.5", "0.25", "--n0", "10",
            "--n", "40", "--max", "2", "--backend", "torch", "--device", "cpu", "--quiet", "--out",
            str(tmp_path / "log.tsv")]
    log = tmp_path / "log.tsv"
    assert main([*args, "--undecided", "fall-through"]) == 0
    sidecar = json.loads((tmp_path / "log.tsv.json").read_text())
    assert json.dumps(sidecar).count('"undecided": "fall_through"') == 1
    finished = log.read_text().splitlines()
    log.write_text("\n".join(finished[:-1]) + "\n")  # as if killed before the last row
    capsys.readouterr()
    assert main(args) != 0  # resuming with the other rule
    assert "undecided" in capsys.readouterr().err
    assert main([*args, "--undecided", "fall-through"]) == 0  # the same rule resumes
    assert len(log.read_text().splitlines()) == len(finished)
