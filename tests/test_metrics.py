import itertools

import numpy as np
import pandas as pd
import pytest

from homefeed.metrics import (
    auc,
    auc_per_group,
    bootstrap_lift_ci,
    evaluate_heads,
    gauc,
    hide_rate_in_top_k,
    hide_rate_in_top_k_per_request,
    hit_at_k,
    hit_at_k_per_request,
    topic_diversity_at_k,
    topic_diversity_at_k_per_request,
)


def _three_requests():
    # request "a": 5 candidates, positives ranked 2nd and 5th -> 1 hit / min(2, 3) = 0.5
    # request "b": 6 candidates, 4 positives, top 3 all positive -> 3 / min(4, 3) = 1.0
    #              (paper-literal normalisation: 3 / 4)
    # request "c": no positive -> left out
    scores = [0.9, 0.8, 0.7, 0.6, 0.5,
              0.9, 0.8, 0.7, 0.1, 0.2, 0.3,
              0.5, 0.4]
    labels = [0, 1, 0, 0, 1,
              1, 1, 1, 0, 1, 0,
              0, 0]
    groups = ["a"] * 5 + ["b"] * 6 + ["c"] * 2
    return np.array(scores), np.array(labels), np.array(groups)


def test_hit_at_3_hand_computed():
    s, y, g = _three_requests()
    per = hit_at_k_per_request(s, y, g, k=3)
    assert per.to_dict() == {"a": 0.5, "b": 1.0}
    assert hit_at_k(s, y, g, k=3) == pytest.approx(0.75)
    literal = hit_at_k_per_request(s, y, g, k=3, normalization="positives")
    assert literal.to_dict() == {"a": 0.5, "b": 0.75}
    # k=1: a's top is a negative, b's top is a positive
    assert hit_at_k(s, y, g, k=1) == pytest.approx(0.5)


def test_hit_at_k_row_order_and_group_layout_do_not_matter():
    s, y, g = _three_requests()
    perm = np.random.default_rng(3).permutation(len(s))
    assert hit_at_k(s[perm], y[perm], g[perm]) == pytest.approx(hit_at_k(s, y, g))


def test_hit_at_k_perfect_ranker_scores_one():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(200), 12)
    y = (rng.random(g.size) < 0.3).astype(int)
    s = y + rng.random(g.size) * 0.5  # every positive above every negative
    assert hit_at_k(s, y, g, k=3) == pytest.approx(1.0)


def test_hit_at_k_ties_are_shared_not_won_by_row_order():
    # 6 tied candidates, 1 positive: expected hit under random tie-break = 3/6, wherever it sits
    for pos in range(6):
        y = np.zeros(6)
        y[pos] = 1
        assert hit_at_k(np.zeros(6), y, np.zeros(6), k=3) == pytest.approx(0.5)
    # a tie straddling the cutoff: one clear top, then 4 tied for the 2 remaining slots
    s = np.array([5.0, 1, 1, 1, 1])
    y = np.array([0, 1, 0, 0, 0])
    assert hit_at_k(s, y, np.zeros(5), k=3) == pytest.approx(2 / 4)


def test_hit_at_k_small_requests_and_bad_input():
    # fewer candidates than k: everything is in the top k
    assert hit_at_k([0.1, 0.2], [1, 1], [7, 7], k=3) == pytest.approx(1.0)
    assert np.isnan(hit_at_k([0.1, 0.2], [0, 0], [7, 7]))
    with pytest.raises(ValueError):
        hit_at_k([np.nan, 1.0], [1, 0], [0, 0])
    with pytest.raises(ValueError):
        hit_at_k([0.1, 0.2], [1, 0], [0, 0], normalization="bogus")


def test_hide_rate_in_top_k_hand_computed():
    repin = np.array([0.9, 0.8, 0.7, 0.6, 0.9, 0.8, 0.7, 0.5, 0.4])
    hide = np.array([1, 0, 1, 0, 0, 0, 0, 0, 1])
    g = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3])
    # request 1: 2 hides in top 3 -> 2/3; request 2: no hide -> excluded by default;
    # request 3: 2 candidates, top k holds both slots -> 1 hide / 2 slots
    per = hide_rate_in_top_k_per_request(repin, hide, g, k=3)
    assert per.to_dict() == pytest.approx({1: 2 / 3, 3: 0.5})
    assert hide_rate_in_top_k(repin, hide, g) == pytest.approx((2 / 3 + 0.5) / 2)
    assert hide_rate_in_top_k(repin, hide, g, only_requests_with_hides=False) == pytest.approx(
        (2 / 3 + 0 + 0.5) / 3)


def test_auc_matches_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, size=60).astype(float)  # many ties
    y = rng.random(60) < 0.4
    pos, neg = s[y], s[~y]
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])
    assert auc(s, y) == pytest.approx(brute)
    assert auc([0.1, 0.9, 0.5], [0, 1, 0]) == 1.0
    assert auc([0.9, 0.1], [0, 1]) == 0.0
    assert np.isnan(auc([0.1, 0.2], [1, 1]))


def test_topic_diversity_hand_computed():
    s = np.array([0.9, 0.8, 0.7, 0.1, 0.9, 0.9, 0.9, 0.8])
    topics = np.array([1, 1, 2, 3, 5, 5, 6, 7])
    g = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # request 0 top 3 = topics {1, 1, 2} -> 2; request 1: tie broken by row order -> {5, 5, 6} -> 2
    assert topic_diversity_at_k_per_request(s, topics, g, k=3).to_dict() == {0: 2.0, 1: 2.0}
    assert topic_diversity_at_k(s, topics, g, k=2) == pytest.approx((1 + 1) / 2)
    assert topic_diversity_at_k(s, topics, g, k=4) == pytest.approx((3 + 3) / 2)


def test_bootstrap_lift_ci_contains_true_lift_and_is_deterministic():
    rng = np.random.default_rng(5)
    n = 4000
    b = rng.random(n)  # per-request metric of the baseline, mean 0.5
    a = np.clip(b * 1.10 + rng.normal(0, 0.05, n), 0, None)  # ~ +10 %
    true_lift = 0.10
    ci = bootstrap_lift_ci(a, b, n_boot=500, seed=11)
    assert ci.low < ci.lift < ci.high
    assert ci.contains(true_lift)
    assert ci.high - ci.low < 0.05  # paired resampling: tight interval
    again = bootstrap_lift_ci(a, b, n_boot=500, seed=11)
    assert again == ci
    other = bootstrap_lift_ci(a, b, n_boot=500, seed=12)
    assert (other.low, other.high) != (ci.low, ci.high)
    # no true difference -> interval contains 0
    null = bootstrap_lift_ci(b, b[rng.permutation(n)], n_boot=500, seed=0)
    assert null.contains(0.0)


def test_bootstrap_aligns_series_on_request_ids():
    a = pd.Series([1.0, 2.0, 3.0], index=["x", "y", "z"])
    b = pd.Series([4.0, 1.0, 2.0, 9.0], index=["w", "x", "y", "q"])  # common: x, y
    ci = bootstrap_lift_ci(a, b, n_boot=50, seed=0)
    assert ci.n_requests == 2
    assert ci.lift == pytest.approx((1.5 / 1.5) - 1.0)
    with pytest.raises(ValueError):
        bootstrap_lift_ci([1.0, 2.0], [1.0], n_boot=10)


def test_evaluate_heads_report():
    s, y, g = _three_requests()
    scores = np.stack([s, s, 1 - s], axis=1)
    labels = np.stack([y, y, y], axis=1)
    rep = evaluate_heads(scores, labels, g, ("repin", "click", "hide"))
    assert rep["hit@3_repin"] == pytest.approx(0.75)
    assert set(rep) == {"hit@3_repin", "auc_repin", "hit@3_click", "auc_click", "hit@3_hide",
                        "auc_hide", "hide_rate@3"}


def test_auc_per_group_and_gauc_match_the_plain_auc_per_group():
    rng = np.random.default_rng(4)
    groups = rng.integers(0, 30, size=600)
    labels = (rng.random(600) < 0.3).astype(int)
    scores = np.round(rng.random(600) + 0.3 * labels, 1)  # ties on purpose
    per = auc_per_group(scores, labels, groups)
    expect, weights = {}, {}
    for g in np.unique(groups):
        m = groups == g
        if 0 < labels[m].sum() < m.sum():
            expect[g], weights[g] = auc(scores[m], labels[m]), m.sum()
    assert per.index.tolist() == sorted(expect)
    np.testing.assert_allclose(per["auc"].to_numpy(), [expect[g] for g in sorted(expect)])
    assert per["n"].tolist() == [weights[g] for g in sorted(expect)]
    w = np.array([weights[g] for g in sorted(expect)])
    assert gauc(scores, labels, groups) == pytest.approx(
        (np.array([expect[g] for g in sorted(expect)]) * w).sum() / w.sum())
    assert np.isnan(gauc(scores, np.zeros(600), groups))
