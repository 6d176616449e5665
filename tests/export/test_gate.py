"""The int8 gate's rule and its error rates, on counts the tests choose: nothing here depends on
which int8 kernels this CPU has."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flowerpipe.export.gate import Paired, Z, judge, refusal_rate, refuses


def test_paired_counts_what_each_model_got_right() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    fp32 = np.array([0, 0, 1, 1, 2, 0, 1, 1])  # wrong on photos 5 and 6
    int8 = np.array([0, 1, 1, 1, 2, 2, 2, 0])  # loses 1 and 7, gains 5, differs on 6 too
    paired = Paired.of(labels, fp32, int8)
    assert (paired.photos, paired.lost, paired.gained, paired.agree) == (8, 2, 1, 4)
    assert paired.accuracy == {"fp32": 6 / 8, "int8": 5 / 8}
    assert paired.drop_points == 12.5
    # the paired standard error: sqrt(changed - net^2 / n) / n
    assert paired.error_points == pytest.approx(100 * math.sqrt(3 - 1 / 8) / 8)


@pytest.mark.parametrize(
    ("lost", "gained", "refused"),
    [
        (0, 0, False),  # the same answers
        (11, 0, False),  # drop 1.0 on 1,100 photos: exactly the allowance
        (25, 0, True),  # drop 2.27 ± 0.45
        (30, 15, False),  # drop 1.36 ± 0.61: within one standard error of the allowance
        (60, 10, True),  # drop 4.55 ± 0.76
    ],
)
def test_rule_refuses_only_what_the_photos_show_to_lose_more_than_allowed(
    lost: int, gained: int, refused: bool
) -> None:
    paired = Paired(1100, lost, gained, 1100 - lost - gained, 1000)
    low = paired.drop_points - Z * paired.error_points
    assert refuses(paired, 1.0) == (low > 1.0) == refused


def test_simulated_refusal_rate_matches_the_binomial() -> None:
    """With no photo gained, int8's losses are binomial: the exact refusal rate, summed over the
    counts the rule refuses, is what the simulation finds."""
    n, true_drop = 1100, 1.5
    paired = Paired(n, 0, 0, n, 1000)
    p = true_drop / 100

    def pmf(k: int) -> float:
        log_comb = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
        return math.exp(log_comb + k * math.log(p) + (n - k) * math.log(1 - p))

    exact = sum(pmf(k) for k in range(n + 1) if refuses(Paired(n, k, 0, 0, 0), 1.0))
    simulated = refusal_rate(paired, true_drop, 1.0, trials=40_000)
    assert 0.05 < exact < 0.95  # a rate the comparison can tell apart
    assert simulated == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 40_000))


@pytest.mark.parametrize("gained", [0, 5, 10, 15])
def test_error_rates_on_the_photos_the_flower_sets_search_does_not_see(gained: int) -> None:
    """On 1,101 photos (the default split's val and test), with up to 15 photos gained (int8 and
    fp32 then disagree on up to 3.2 % of photos at a 0.5-point drop): a model that loses half a
    point is refused under 5 % of the time, one that loses 3 points over 95 %."""
    paired = Paired(1101, gained, gained, 1101 - 2 * gained, 1000)
    rates = judge(paired, 1.0)["refusal_rate_if_true_drop"]
    assert rates["0.5"] <= 0.05 and rates["3"] >= 0.95
    assert refusal_rate(paired, 0.5, 1.0) == rates["0.5"]  # seeded: the record can be recomputed


def test_a_bare_threshold_would_be_a_coin_toss() -> None:
    """What the rule is for: a model whose true drop is exactly the allowance, judged by the bare
    drop, would be refused about half the time; the rule refuses it far less often."""
    paired = Paired(551, 4, 4, 543, 500)
    rate = refusal_rate(paired, 1.0, 1.0)
    assert rate < 0.25
    counts = np.random.default_rng(0).multinomial(551, [0.0173, 0.0073, 0.9754], 20_000)
    bare = np.mean(100 * (counts[:, 0] - counts[:, 1]) / 551 > 1.0)
    assert 0.3 < bare < 0.6


def test_judge_records_its_verdict_and_rates() -> None:
    paired = Paired(551, 4, 1, 545, 510)
    verdict = judge(paired, 1.0)
    assert verdict["refused"] is False and verdict["photos"] == 551 and verdict["lost"] == 4
    assert set(verdict["refusal_rate_if_true_drop"]) == {"0.5", "3"}
    assert f"{Z:g} x error_points" in verdict["rule"]
    # an allowance no model can exceed on these photos has no rate to state
    assert set(judge(paired, 100.0)["refusal_rate_if_true_drop"]) == {"50"}
