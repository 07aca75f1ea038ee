"""Multi-label metrics: independent sigmoid probabilities, one decision threshold per label.

``probs`` are (N, C) probabilities, ``targets`` the (N, C) 0/1 indicator matrix; a label is
predicted when its probability is at or above its threshold (:func:`decide`). scikit-learn does
the metric arithmetic; values undefined on the data (the AP of a label with no positives) are
``None``, never a silent 0. Everything returned is plain python, ready for metrics.json.
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.5
RELIABILITY_BINS = 10


def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must be a non-empty (N, C) array, got shape {p.shape}")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("probs must be probabilities in [0, 1] (sigmoid outputs, not logits)")
    return p


def _check(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = _check_probs(probs), np.asarray(targets)
    if t.shape != p.shape:
        raise ValueError(f"targets shape {t.shape} does not match probs shape {p.shape}")
    if not np.isin(t, (0, 1)).all():
        raise ValueError("targets must be a 0/1 indicator matrix")
    return p, t.astype(np.int64)


def _thresholds(thresholds: np.ndarray | None, n_labels: int) -> np.ndarray:
    if thresholds is None:
        return np.full(n_labels, DEFAULT_THRESHOLD)
    th = np.asarray(thresholds, dtype=np.float64)
    if th.shape != (n_labels,):
        raise ValueError(f"thresholds must have shape ({n_labels},), got {th.shape}")
    return th


def _classes(classes: list[str] | None, n_labels: int) -> list[str]:
    if classes is None:
        return [str(i) for i in range(n_labels)]
    if len(classes) != n_labels:
        raise ValueError(f"{len(classes)} class names for {n_labels} labels")
    return list(classes)


def decide(probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Boolean (N, C) decisions: ``probs >= thresholds`` (default 0.5 for every label)."""
    p = _check_probs(probs)
    return p >= _thresholds(thresholds, p.shape[1])


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray,
                       thresholds: np.ndarray | None = None,
                       classes: list[str] | None = None) -> dict:
    """The standard multi-label scores at the given thresholds, plus a ``per_label`` breakdown.

    ``mAP`` is the mean average precision over the labels with at least one positive (``None``
    when there are none); the other scores use the thresholded decisions.
    """
    from sklearn import metrics as skm  # here: the torch-free bundle predictor imports this module

    p, t = _check(probs, targets)
    th = _thresholds(thresholds, p.shape[1])
    names = _classes(classes, p.shape[1])
    pred = (p >= th).astype(np.int64)
    prec, rec, f1, support = skm.precision_recall_fscore_support(
        t, pred, average=None, zero_division=0)
    micro_p, micro_r, _, _ = skm.precision_recall_fscore_support(
        t, pred, average="micro", zero_division=0)
    ap = [float(skm.average_precision_score(t[:, c], p[:, c])) if t[:, c].any() else None
          for c in range(p.shape[1])]
    known = [a for a in ap if a is not None]
    # a label neither present nor predicted has no precision, recall or F1 (not 0): macro F1 is
    # over the others, as mAP is over the labels with a positive
    seen = (support > 0) | (pred.sum(0) > 0)
    per_label = {name: {**({"precision": float(prec[c]), "recall": float(rec[c]),
                            "f1": float(f1[c])} if seen[c] else
                           {"precision": None, "recall": None, "f1": None}),
                        "ap": ap[c], "support": int(support[c]), "threshold": float(th[c])}
                 for c, name in enumerate(names)}
    return {
        "micro_f1": float(skm.f1_score(t, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1[seen].mean()) if seen.any() else None,
        "samples_f1": float(skm.f1_score(t, pred, average="samples", zero_division=0)),
        "mAP": float(np.mean(known)) if known else None,
        "subset_accuracy": float(skm.accuracy_score(t, pred)),
        "hamming_loss": float(skm.hamming_loss(t, pred)),
        "label_cardinality": float(t.sum(1).mean()),
        "predicted_cardinality": float(pred.sum(1).mean()),
        "micro_precision": float(micro_p),
        "micro_recall": float(micro_r),
        "per_label": per_label,
    }


def _candidates(p: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive distinct values of {0, p, 1}, plus 0.5 (sorted)."""
    u = np.unique(np.concatenate(([0.0], p, [1.0])))
    return np.unique(np.append((u[:-1] + u[1:]) / 2, DEFAULT_THRESHOLD))


def _best_threshold(p: np.ndarray, y: np.ndarray, grid: np.ndarray | None) -> float:
    n_pos = int(y.sum())
    if n_pos == 0:
        return DEFAULT_THRESHOLD
    cand = _candidates(p) if grid is None else grid
    order = np.argsort(p, kind="stable")
    sorted_p = p[order]
    # positives strictly below each candidate; everything at or above it is predicted positive
    pos_below = np.concatenate(([0], np.cumsum(y[order])))
    first = np.searchsorted(sorted_p, cand, side="left")
    tp = n_pos - pos_below[first]
    predicted = len(p) - first
    f1 = 2 * tp / (predicted + n_pos)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    # ties: nearest to 0.5 (distances rounded, so 0.3 and 0.7 are equally near), then the lower
    pick = min(best, key=lambda i: (round(abs(cand[i] - DEFAULT_THRESHOLD), 12), cand[i]))
    return float(cand[pick])


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, metric: str = "f1",
                    grid: np.ndarray | None = None) -> np.ndarray:
    """Per-label thresholds that maximise each label's F1 on ``probs``/``targets`` (validation).

    The default candidates for a label are the midpoints between consecutive distinct values of
    {0, its probabilities, 1}, plus 0.5: every distinct decision on the data is reachable, so the
    result is the exact optimum there, and (0.5 aside) never sits on an observed probability.
    ``grid`` (a 1-D array) replaces the candidates for every label. Ties go to the candidate
    nearest 0.5 (then the lower one); a label without positives keeps 0.5.
    """
    if metric != "f1":
        raise ValueError(f"unknown metric {metric!r}; only 'f1' is supported")
    p, t = _check(probs, targets)
    if grid is not None:
        grid = np.asarray(grid, dtype=np.float64)
        if grid.ndim != 1 or grid.size == 0:
            raise ValueError("grid must be a non-empty 1-D array of thresholds")
        grid = np.unique(grid)
    return np.array([_best_threshold(p[:, c], t[:, c], grid) for c in range(p.shape[1])])


def confused_pairs(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | None,
                   classes: list[str] | None, k: int = 10) -> list[dict]:
    """The ``k`` most frequent (true label, false-positive label) pairs.

    An example adds one to (a, b) for every label ``a`` it truly has and every label ``b`` it is
    predicted to have but doesn't. Sorted by count (largest first), then by the two names.
    """
    p, t = _check(probs, targets)
    names = _classes(classes, p.shape[1])
    false_pos = (p >= _thresholds(thresholds, p.shape[1])) & (t == 0)
    counts = t.T @ false_pos.astype(np.int64)  # (C, C): [a, b] = examples with a true, b a FP
    pairs = [(int(counts[a, b]), names[a], names[b]) for a, b in zip(*np.nonzero(counts))]
    pairs.sort(key=lambda x: (-x[0], x[1], x[2]))
    return [{"true": a, "predicted": b, "count": n} for n, a, b in pairs[:k]]


def reliability_per_label(probs: np.ndarray, targets: np.ndarray, bins: int = RELIABILITY_BINS,
                          classes: list[str] | None = None) -> dict[str, dict]:
    """Per-label binary reliability of the sigmoid probability over equal-width bins.

    Bins are (lo, hi] (the first also holds 0). For each label: ``ece`` (the count-weighted mean
    of |mean probability - fraction positive|), ``mce`` (the largest gap) and, per bin, ``count``,
    ``mean_prob`` and ``frac_positive`` (``None`` for an empty bin).
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    p, t = _check(probs, targets)
    names = _classes(classes, p.shape[1])
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, bins - 1)
    out: dict[str, dict] = {}
    for c, name in enumerate(names):
        count = np.bincount(idx[:, c], minlength=bins)
        prob_sum = np.bincount(idx[:, c], weights=p[:, c], minlength=bins)
        pos_sum = np.bincount(idx[:, c], weights=t[:, c], minlength=bins)
        full = count > 0
        mean_prob = np.divide(prob_sum, count, out=np.zeros(bins), where=full)
        frac_pos = np.divide(pos_sum, count, out=np.zeros(bins), where=full)
        gap = np.abs(mean_prob - frac_pos)
        out[name] = {
            "ece": float((count * gap).sum() / len(p)),
            "mce": float(gap[full].max()),
            "count": count.tolist(),
            "mean_prob": [float(v) if f else None for v, f in zip(mean_prob, full)],
            "frac_positive": [float(v) if f else None for v, f in zip(frac_pos, full)],
        }
    return out


def multilabel_ece(probs: np.ndarray, targets: np.ndarray, bins: int = RELIABILITY_BINS) -> float:
    """Macro-average over labels of the per-label ECE of :func:`reliability_per_label`."""
    per_label = reliability_per_label(probs, targets, bins)
    return float(np.mean([r["ece"] for r in per_label.values()]))


def describe_labels(name: str, probs: np.ndarray, classes: list[str],
                    thresholds: list[float] | None, topk: int) -> dict:
    """One input's multi-label prediction from its (C,) calibrated probabilities: every label at
    or above its threshold (most probable first), the mean confidence of all the decisions
    (each label's probability of what was decided for it), and the ``topk`` most probable labels
    with their thresholds. The one record predict, the bundle predictor and serve return."""
    p = np.asarray(probs, dtype=np.float64)
    cut = np.asarray(thresholds if thresholds is not None else [DEFAULT_THRESHOLD] * len(p))
    present = p >= cut
    order = np.argsort(-p, kind="stable")
    return {"input": name, "labels": [classes[i] for i in order if present[i]],
            "confidence": float(np.where(present, p, 1 - p).mean()),
            "top": [{"label": classes[i], "prob": float(p[i]), "threshold": float(cut[i])}
                    for i in order[:min(topk, len(classes))]]}
