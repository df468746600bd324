"""Evaluation metrics: the one home of every number the course reports.

* perplexity: exp of the mean next-token negative log-likelihood (nats per token);
* classification: accuracy, confusion matrix, precision / recall / F1 per class and macro, micro, weighted
  (equal to scikit-learn's, ``zero_division=0``), exact match;
* generation: ROUGE-1/2/L (equal to Google's ``rouge-score`` without stemming);
* evidence: percentile bootstrap intervals, a paired bootstrap and McNemar's test for "is B better than A on
  the same items", both in one paired report of two classifiers, and a win rate with its Wilson interval;
* repeated runs: the mean and spread of one measurement over seeds, and a paired comparison over seeds.
"""
from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm


@torch.inference_mode()
def perplexity(model: nn.Module, tokenizer, text: str, max_length: int = 512, max_tokens: int | None = None,
               progress: bool = False) -> float:
    """Perplexity of ``text`` under ``model``: the text is tokenized once, cut into consecutive windows
    of ``max_length`` tokens, and every token but each window's first is predicted from the ones before
    it in its window. ``max_tokens`` truncates the text's tokens first (for a fixed, comparable budget)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise ValueError("perplexity needs a text of at least two tokens")
    device = next(model.parameters()).device
    total_nll, count = 0.0, 0
    for start in tqdm(range(0, ids.numel(), max_length), desc="perplexity", disable=not progress, leave=False):
        window = ids[start:start + max_length].unsqueeze(0).to(device)
        if window.shape[1] < 2:
            break
        logits = model(input_ids=window).logits[0, :-1].float()
        total_nll += nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum").item()
        count += window.shape[1] - 1
    return math.exp(total_nll / count)


# --- classification ---------------------------------------------------------------------------------------------

def _check_pairs(predictions: Sequence, targets: Sequence) -> None:
    if isinstance(predictions, str) or isinstance(targets, str):
        raise TypeError("predictions and targets are sequences of labels, not strings")
    if len(predictions) != len(targets):
        raise ValueError(f"need equally many predictions and targets, got {len(predictions)} and {len(targets)}")
    if not targets:
        raise ValueError("no predictions to score")


def accuracy(predictions: Sequence, targets: Sequence) -> float:
    """Fraction of predictions equal to their targets."""
    _check_pairs(predictions, targets)
    return sum(p == t for p, t in zip(predictions, targets)) / len(targets)


def _label_index(labels: Sequence, *sequences: Sequence) -> dict:
    """Each label's position in ``labels``; a value of ``sequences`` outside ``labels`` raises, naming it."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(x) for seq in sequences for x in seq if x not in index})
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among {list(labels)}")
    return index


def confusion_matrix(predictions: Sequence, targets: Sequence, labels: Sequence) -> torch.Tensor:
    """(len(labels), len(labels)) counts: row = true label, column = predicted label (scikit-learn's layout).
    A prediction or target outside ``labels`` raises."""
    _check_pairs(predictions, targets)
    index = _label_index(labels, predictions, targets)
    matrix = torch.zeros(len(labels), len(labels), dtype=torch.int64)
    for p, t in zip(predictions, targets):
        matrix[index[t], index[p]] += 1
    return matrix


def precision_recall_f1(matrix: torch.Tensor, average: str | None = "macro") -> dict[str, torch.Tensor | float]:
    """Precision, recall and F1 from a confusion matrix (rows true, columns predicted).

    Per class: P = TP / (TP + FP), R = TP / (TP + FN), F1 = 2PR / (P + R), each 0 where its denominator is 0
    (scikit-learn's ``zero_division=0``). ``average``: None (per-class tensors), "macro" (unweighted mean over
    classes), "weighted" (mean weighted by each class's true count), or "micro" (from the summed counts: equal
    to accuracy when every item has one label)."""
    m = matrix.to(torch.float64)
    tp, predicted, actual = m.diag(), m.sum(0), m.sum(1)
    if average == "micro":
        p = r = (tp.sum() / m.sum()).item() if m.sum() > 0 else 0.0
        return {"precision": p, "recall": r, "f1": p}
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-300),
                     torch.zeros_like(tp))
    if average is None:
        return {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    if average == "macro":
        weights = torch.full_like(tp, 1 / len(tp))
    elif average == "weighted":
        weights = actual / actual.sum()
    else:
        raise ValueError(f"average must be None, 'macro', 'micro' or 'weighted', got {average!r}")
    return {k: float((v * weights).sum()) for k, v in (("precision", precision), ("recall", recall), ("f1", f1))}


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after stripping and lower-casing."""
    _check_pairs(predictions, references)
    return sum(p.strip().lower() == r.strip().lower() for p, r in zip(predictions, references)) / len(references)


# --- generation: ROUGE (Lin, 2004) ---------------------------------------------------------------------------

def rouge_tokens(text: str) -> list[str]:
    """Google's rouge-score tokenisation without stemming: lower-case, every run of characters other than
    a-z and 0-9 is a separator."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _prf(overlap: float, predicted: int, reference: int) -> dict[str, float]:
    p = overlap / predicted if predicted else 0.0
    r = overlap / reference if reference else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, O(len a * len b))."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_n(prediction: str, reference: str, n: int = 1) -> dict[str, float]:
    """ROUGE-N: clipped n-gram overlap over the prediction's (precision) and the reference's (recall) n-grams."""
    pred, ref = _ngrams(rouge_tokens(prediction), n), _ngrams(rouge_tokens(reference), n)
    return _prf(sum((pred & ref).values()), sum(pred.values()), sum(ref.values()))


def rouge_l(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-L: LCS of the token sequences over the prediction's and the reference's length."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    return _prf(lcs_length(pred, ref), len(pred), len(ref))


# --- turning a number into evidence --------------------------------------------------------------------------

def _resamples(n: int, resamples: int, seed: int) -> torch.Tensor:
    """(resamples, n) item indices drawn with replacement: one bootstrap sample per row."""
    return torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(seed))


def bootstrap_ci(values: Sequence[float], statistic=None, confidence: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): the statistic (default: the mean) of ``values`` and its percentile bootstrap
    interval: ``resamples`` samples of the same size drawn *with replacement*, the statistic of each, and the
    (1-confidence)/2 and (1+confidence)/2 quantiles of those."""
    data = torch.as_tensor(list(values), dtype=torch.float64)
    if data.numel() == 0:
        raise ValueError("no values to bootstrap")
    statistic = statistic or (lambda x: x.mean(-1))
    stats = statistic(data[_resamples(data.numel(), resamples, seed)])
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(stats, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return float(statistic(data.unsqueeze(0))[0]), low, high


def bootstrap_metric(metric, predictions: Sequence, targets: Sequence, confidence: float = 0.95,
                     resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high) of a corpus-level ``metric(predictions, targets)`` that is not a mean of per-item
    scores (macro-F1, corpus BLEU): the (prediction, target) pairs are resampled with replacement, the metric
    recomputed on each sample, and the percentile interval read off as in :func:`bootstrap_ci`."""
    _check_pairs(predictions, targets)
    stats = torch.tensor([metric([predictions[i] for i in row], [targets[i] for i in row])
                          for row in _resamples(len(targets), resamples, seed).tolist()], dtype=torch.float64)
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(stats, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return float(metric(list(predictions), list(targets))), low, high


def paired_bootstrap(scores_a: Sequence[float], scores_b: Sequence[float], resamples: int = 2000,
                     seed: int = 0) -> dict[str, float]:
    """Is B better than A on the same items? Resample the items (with replacement) and count how often B's
    mean does not beat A's: a one-sided p-value for "B > A" (Koehn, 2004). Also the mean difference B - A and
    its 95% percentile interval."""
    a = torch.as_tensor(list(scores_a), dtype=torch.float64)
    b = torch.as_tensor(list(scores_b), dtype=torch.float64)
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"need two equally long, non-empty lists of scores, got {a.numel()} and {b.numel()}")
    diffs = (b - a)[_resamples(a.numel(), resamples, seed)].mean(-1)
    low, high = torch.quantile(diffs, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"difference": float((b - a).mean()), "low": low, "high": high, "p_value": float((diffs <= 0).double().mean())}


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool], exact: bool = True) -> dict[str, float]:
    """McNemar's test on paired right/wrong outcomes of two classifiers on the same items: only the
    discordant pairs count (b = A right, B wrong; c = A wrong, B right). Exact: two-sided binomial test of
    min(b, c) in b + c trials at p = 1/2; otherwise the chi-square statistic with continuity correction."""
    if len(correct_a) != len(correct_b) or not correct_a:
        raise ValueError(f"need two equally long, non-empty lists of outcomes, got {len(correct_a)} and {len(correct_b)}")
    b = sum(bool(x) and not bool(y) for x, y in zip(correct_a, correct_b))
    c = sum(not bool(x) and bool(y) for x, y in zip(correct_a, correct_b))
    n = b + c
    if n == 0:
        return {"b": 0, "c": 0, "statistic": 0.0, "p_value": 1.0}
    if exact:
        k = min(b, c)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
        return {"b": b, "c": c, "statistic": float(k), "p_value": min(1.0, 2 * tail)}
    statistic = (abs(b - c) - 1) ** 2 / n
    return {"b": b, "c": c, "statistic": statistic, "p_value": math.erfc(math.sqrt(statistic / 2))}


def paired_report(targets: Sequence, predictions_a: Sequence, predictions_b: Sequence, labels: Sequence,
                  confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict:
    """Two classifiers on the same items, as one report: accuracy and macro-F1 (over ``labels``) of A and of B, the
    accuracy difference B - A, each as (value, low, high) with its percentile bootstrap interval, and McNemar's
    exact test (``b``: A right and B wrong, ``c``: the reverse, ``p_value``). Paired: one set of resampled items
    (:func:`bootstrap_ci`'s) serves every statistic, so A and B are always scored on the same sample."""
    _check_pairs(predictions_a, targets)
    _check_pairs(predictions_b, targets)
    index = _label_index(labels, targets, predictions_a, predictions_b)
    t, a, b = (torch.tensor([index[x] for x in seq]) for seq in (targets, predictions_a, predictions_b))

    def accuracy_of(p: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (p[rows] == t[rows]).double().mean(-1)

    def macro_f1_of(p: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        pr, tr = p[rows], t[rows]
        f1 = []
        for c in range(len(labels)):
            tp = ((pr == c) & (tr == c)).sum(-1).double()
            errors = ((pr == c) != (tr == c)).sum(-1).double()  # false positives + false negatives
            f1.append(torch.where(2 * tp + errors > 0, 2 * tp / (2 * tp + errors).clamp_min(1), torch.zeros_like(tp)))
        return torch.stack(f1).mean(0)

    everything, rows = torch.arange(len(targets)).unsqueeze(0), _resamples(len(targets), resamples, seed)
    alpha = (1 - confidence) / 2

    def interval(statistic) -> tuple[float, float, float]:
        low, high = torch.quantile(statistic(rows), torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
        return float(statistic(everything)[0]), low, high

    test = mcnemar((a == t).tolist(), (b == t).tolist())
    return {"accuracy_a": interval(lambda r: accuracy_of(a, r)), "accuracy_b": interval(lambda r: accuracy_of(b, r)),
            "macro_f1_a": interval(lambda r: macro_f1_of(a, r)), "macro_f1_b": interval(lambda r: macro_f1_of(b, r)),
            "difference": interval(lambda r: accuracy_of(b, r) - accuracy_of(a, r)),
            "b": test["b"], "c": test["c"], "p_value": test["p_value"]}


def win_rate(wins: int, losses: int, ties: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """Share of pairwise judgements won (a tie counts half) and its Wilson score interval."""
    n = wins + losses + ties
    if n == 0:
        raise ValueError("no judgements")
    p = (wins + ties / 2) / n
    z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, centre - half, centre + half


def seed_summary(values: Sequence[float]) -> dict[str, float]:
    """One measurement repeated over seeds: its mean, sample standard deviation (n - 1), minimum and maximum.
    A conclusion that holds only inside this spread is not a conclusion."""
    values = [float(v) for v in values]
    if len(values) < 2:
        raise ValueError(f"a spread needs at least 2 runs (one per seed), got {len(values)}")
    return {"n": len(values), "mean": statistics.fmean(values), "sd": statistics.stdev(values),
            "min": min(values), "max": max(values)}


def paired_over_seeds(correct_a: Sequence[Sequence[bool]], correct_b: Sequence[Sequence[bool]]) -> dict:
    """Is B better than A, run once per seed, both scored on the same items? Per seed: the accuracy difference
    B - A and McNemar's test (:func:`mcnemar`); over two or more seeds: the differences' :func:`seed_summary`
    (one seed is one paired test, with no spread to report)."""
    if len(correct_a) != len(correct_b) or not correct_a:
        raise ValueError(f"need one run of A and one of B per seed, got {len(correct_a)} and {len(correct_b)}")
    per_seed = [{**mcnemar(a, b), "difference": (sum(map(bool, b)) - sum(map(bool, a))) / len(a)}
                for a, b in zip(correct_a, correct_b)]
    if len(per_seed) == 1:
        return {"per_seed": per_seed}
    return {"per_seed": per_seed, "difference": seed_summary([p["difference"] for p in per_seed])}
