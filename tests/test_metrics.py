"""course_lib.metrics: equal to scikit-learn, rouge-score and scipy on the same inputs; clear errors on bad input."""
import math
import random

import numpy as np
import pytest
import torch

from course_lib import metrics
from course_lib.data import load_tickets

LABELS = ["account", "delivery", "feedback", "payment", "technical"]


def _random_labels(seed, n=300, absent=()):
    rng = random.Random(seed)
    pool = [label for label in LABELS if label not in absent]
    targets = [rng.choice(LABELS) for _ in range(n)]
    predictions = [t if rng.random() < 0.6 else rng.choice(pool) for t in targets]
    return [p if p in pool else pool[0] for p in predictions], targets


@pytest.mark.parametrize("seed, absent", [(0, ()), (1, ("feedback",)), (2, ("payment", "technical"))])
def test_classification_metrics_equal_scikit_learn(seed, absent):
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    predictions, targets = _random_labels(seed, absent=absent)
    labels = LABELS + ["unused"]  # a label nobody predicts or has: zero division everywhere
    matrix = metrics.confusion_matrix(predictions, targets, labels)
    assert matrix.tolist() == confusion_matrix(targets, predictions, labels=labels).tolist()
    assert metrics.accuracy(predictions, targets) == accuracy_score(targets, predictions)
    for average in (None, "macro", "micro", "weighted"):
        ours = metrics.precision_recall_f1(matrix, average)
        p, r, f, support = precision_recall_fscore_support(targets, predictions, labels=labels, average=average,
                                                           zero_division=0)
        for name, theirs in (("precision", p), ("recall", r), ("f1", f)):
            got = ours[name].tolist() if average is None else ours[name]
            assert got == pytest.approx(theirs.tolist() if average is None else theirs, abs=1e-12), (average, name)


def test_classification_inputs_are_checked():
    with pytest.raises(ValueError, match="equally many"):
        metrics.accuracy(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no predictions"):
        metrics.accuracy([], [])
    with pytest.raises(TypeError, match="not strings"):
        metrics.accuracy("ab", "ab")
    with pytest.raises(ValueError, match=r"\['spam'\] are not among"):
        metrics.confusion_matrix(["spam"], ["account"], LABELS)
    with pytest.raises(ValueError, match="average must be"):
        metrics.precision_recall_f1(torch.eye(2, dtype=torch.int64), "samples")
    assert metrics.exact_match([" Paris ", "rome"], ["paris", "Madrid"]) == 0.5


def _pairs(count=240):
    rng = random.Random(0)
    texts = [r["text"] for r in load_tickets("train")[:count]]
    pairs = []
    for i, text in enumerate(texts):
        words = text.split()
        kind = i % 4
        if kind == 0:
            prediction = " ".join(rng.sample(words, len(words)))
        elif kind == 1:
            prediction = " ".join(w for w in words if rng.random() < 0.7) or "x"
        elif kind == 2:
            prediction = texts[(i + 1) % len(texts)]
        else:
            prediction = text.upper() + " Really, it's URGENT!!"
        pairs.append((prediction, text))
    return pairs + [("", "something"), ("same same same", "same"), ("Don't-stop: 24/7", "dont stop 24 7")]


def test_rouge_equals_googles_rouge_score_on_240_pairs():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    for prediction, reference in _pairs():
        theirs = scorer.score(reference, prediction)
        for ours, name in ((metrics.rouge_n(prediction, reference, 1), "rouge1"),
                           (metrics.rouge_n(prediction, reference, 2), "rouge2"),
                           (metrics.rouge_l(prediction, reference), "rougeL")):
            assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx(
                (theirs[name].precision, theirs[name].recall, theirs[name].fmeasure), abs=1e-12), (name, prediction)


def test_lcs_on_tokens_against_brute_force():
    from itertools import combinations

    rng = random.Random(1)
    for _ in range(50):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        best = max((k for k in range(len(a) + 1) for sub in combinations(a, k)
                    if _is_subsequence(sub, b)), default=0)
        assert metrics.lcs_length(a, b) == best


def _is_subsequence(sub, seq):
    it = iter(seq)
    return all(x in it for x in sub)


def test_bootstrap_interval_matches_scipy_and_resamples_with_replacement():
    from scipy.stats import bootstrap

    rng = random.Random(0)
    values = [float(rng.random() < 0.8) for _ in range(400)]
    estimate, low, high = metrics.bootstrap_ci(values, resamples=4000, seed=0)
    theirs = bootstrap((values,), lambda x, axis: x.mean(axis), method="percentile", n_resamples=4000,
                       confidence_level=0.95, rng=np.random.default_rng(0)).confidence_interval
    assert estimate == sum(values) / len(values)
    assert low == pytest.approx(theirs.low, abs=0.01) and high == pytest.approx(theirs.high, abs=0.01)
    assert metrics.bootstrap_ci([1.0] * 10) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="no values"):
        metrics.bootstrap_ci([])


def test_bootstrap_metric_resamples_pairs_and_recomputes_the_metric():
    predictions, targets = _random_labels(3, n=200)
    macro = lambda p, t: metrics.precision_recall_f1(metrics.confusion_matrix(p, t, LABELS))["f1"]
    estimate, low, high = metrics.bootstrap_metric(macro, predictions, targets, resamples=500, seed=1)
    assert estimate == macro(predictions, targets) and low < estimate < high
    # the same draws by hand: row k of the resample indices picks the k-th bootstrap sample
    rows = metrics._resamples(200, 500, 1).tolist()
    by_hand = torch.tensor([macro([predictions[i] for i in r], [targets[i] for i in r]) for r in rows], dtype=torch.float64)
    assert [low, high] == pytest.approx(torch.quantile(by_hand, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist())
    # accuracy is a mean of 0/1 scores: both bootstraps agree on it
    acc = metrics.bootstrap_metric(metrics.accuracy, predictions, targets, resamples=500, seed=1)
    assert acc == pytest.approx(metrics.bootstrap_ci([float(p == t) for p, t in zip(predictions, targets)], resamples=500,
                                                     seed=1))
    with pytest.raises(ValueError, match="equally many"):
        metrics.bootstrap_metric(macro, predictions, targets[:-1])


def test_paired_tests_equal_scipy():
    from scipy.stats import binomtest, chi2

    rng = random.Random(3)
    a = [rng.random() < 0.7 for _ in range(225)]
    b = [x or rng.random() < 0.4 for x in a]
    result = metrics.mcnemar(a, b)
    discordant = result["b"] + result["c"]
    assert result["p_value"] == pytest.approx(binomtest(result["b"], discordant, 0.5).pvalue, abs=1e-12)
    approx = metrics.mcnemar(a, b, exact=False)
    assert approx["p_value"] == pytest.approx(chi2.sf(approx["statistic"], 1), abs=1e-12)
    assert metrics.mcnemar(a, a)["p_value"] == 1.0
    better = metrics.paired_bootstrap([float(x) for x in a], [float(x) for x in b])
    assert better["difference"] > 0 and better["low"] > 0 and better["p_value"] < 0.01
    assert metrics.paired_bootstrap([1.0, 0.0], [1.0, 0.0])["p_value"] == 1.0
    with pytest.raises(ValueError, match="equally long"):
        metrics.paired_bootstrap([1.0], [1.0, 0.0])


def test_win_rate_wilson_interval_equals_scipy():
    from scipy.stats import binomtest

    rate, low, high = metrics.win_rate(14, 4, 2)
    assert rate == 15 / 20
    theirs = binomtest(15, 20).proportion_ci(confidence_level=0.95, method="wilson")
    assert (low, high) == pytest.approx((theirs.low, theirs.high), abs=1e-12)
    with pytest.raises(ValueError):
        metrics.win_rate(0, 0)


def test_seed_summary_is_the_mean_and_sample_spread_of_the_runs():
    runs = [0.84, 0.80, 0.871]
    summary = metrics.seed_summary(runs)
    assert summary["n"] == 3 and summary["min"] == 0.80 and summary["max"] == 0.871
    assert summary["mean"] == pytest.approx(np.mean(runs))
    assert summary["sd"] == pytest.approx(np.std(runs, ddof=1))  # the sample (n - 1) spread, not ddof=0
    with pytest.raises(ValueError, match="at least 2"):
        metrics.seed_summary([0.9])


def test_paired_over_seeds_pairs_each_seed_and_summarises_the_differences():
    a = [[True, True, False, False], [True, False, False, False], [True, True, True, False]]
    b = [[True, True, True, False], [True, True, True, False], [True, True, True, False]]
    out = metrics.paired_over_seeds(a, b)
    assert [p["difference"] for p in out["per_seed"]] == [0.25, 0.5, 0.0]
    assert [(p["b"], p["c"]) for p in out["per_seed"]] == [(0, 1), (0, 2), (0, 0)]
    assert out["difference"]["mean"] == pytest.approx(0.25) and out["difference"]["sd"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="per seed"):
        metrics.paired_over_seeds(a, b[:2])
    with pytest.raises(ValueError, match="per seed"):
        metrics.paired_over_seeds([], [])
    one = metrics.paired_over_seeds(a[:1], b[:1])  # one seed: its paired test, no spread
    assert one == {"per_seed": out["per_seed"][:1]}


def _three_label_run(n=120, seed=0):
    rng = random.Random(seed)
    labels = ["x", "y", "z"]
    targets = [rng.choice(labels) for _ in range(n)]
    pred_a = [t if rng.random() < 0.7 else rng.choice(labels) for t in targets]
    pred_b = [p if rng.random() < 0.8 else t for p, t in zip(pred_a, targets)]  # mostly agrees with A, a bit better
    return labels, targets, pred_a, pred_b


def test_paired_report_is_the_pieces_on_one_set_of_resamples():
    labels, targets, pred_a, pred_b = _three_label_run()
    report = metrics.paired_report(targets, pred_a, pred_b, labels, confidence=0.9, resamples=500, seed=3)
    right_a, right_b = [p == t for p, t in zip(pred_a, targets)], [p == t for p, t in zip(pred_b, targets)]
    assert report["accuracy_a"] == pytest.approx(metrics.bootstrap_ci(right_a, confidence=0.9, resamples=500, seed=3))
    macro = lambda p, t: metrics.precision_recall_f1(metrics.confusion_matrix(p, t, labels))["f1"]
    assert report["macro_f1_b"] == pytest.approx(metrics.bootstrap_metric(macro, pred_b, targets, confidence=0.9,
                                                                          resamples=500, seed=3))
    diff = [float(y) - float(x) for x, y in zip(right_a, right_b)]
    assert report["difference"] == pytest.approx(metrics.bootstrap_ci(diff, confidence=0.9, resamples=500, seed=3))
    test = metrics.mcnemar(right_a, right_b)
    assert (report["b"], report["c"], report["p_value"]) == (test["b"], test["c"], test["p_value"])


def test_paired_report_interval_of_the_difference_is_narrower_than_unpaired():
    labels, targets, pred_a, pred_b = _three_label_run(n=300, seed=1)
    report = metrics.paired_report(targets, pred_a, pred_b, labels, resamples=2000)
    paired = report["difference"][2] - report["difference"][1]
    unpaired = math.hypot(*(report[k][2] - report[k][1] for k in ("accuracy_a", "accuracy_b")))
    assert paired < 0.8 * unpaired  # the systems agree on most items, so their errors cancel in the paired difference


def test_paired_report_refuses_bad_input():
    with pytest.raises(ValueError, match="not among"):
        metrics.paired_report(["x", "w"], ["x", "x"], ["x", "x"], ["x", "y"])
    with pytest.raises(ValueError, match="equally many"):
        metrics.paired_report(["x", "y"], ["x"], ["x", "y"], ["x", "y"])
