"""What is wrong with a labeled dataset, from keys and features the modality computes: the audit's
analysis, with no knowledge of images, texts or sounds.

Inputs are flat ``Entry`` rows (input, split, class index) plus, per row, what the modality gives:
``content`` (equal = exact duplicates), ``near`` keys with a ``near_match`` test (perceptual hashes,
folded texts), backbone ``features`` and cheap ``stats`` (sizes, lengths). Findings:

* ``exact_duplicate`` / ``leak``: the same content twice in one split, or across splits (train and
  val: every validation metric is inflated); ``label_conflict`` when the copies disagree;
* ``near_duplicate`` / ``near_leak``: among each input's nearest neighbours by cosine similarity of
  the backbone features (one blocked matrix product, no Python double loop), pairs that the near
  keys match or whose similarity is at least ``NEAR_COSINE``;
* ``label_issue``: out-of-sample probabilities of a k-fold cross-validated logistic-regression
  probe on the features, ranked by cleanlab's ``find_label_issues`` (confident learning,
  Northcutt et al. 2021);
* ``outlier``: inputs far from all others (mean cosine distance to their k nearest neighbours
  beyond Q3 + 3 IQR, on a log scale), and ``odd_input``: a statistic far from the rest (robust
  z-score of its logarithm over 5);
* ``imbalance`` / ``few_train`` / ``few_val``: class counts per split, the imbalance ratio,
  classes with almost no training examples (a broken label more often than a class) and with
  too few validation examples to measure.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

NEAR_COSINE = 0.95  # backbone-feature similarity that alone makes two inputs near-duplicates
NEIGHBOURS = 5
FEW_VAL = 10  # a class with fewer validation examples cannot be measured (1 error = 10 points)
IMBALANCED = 3.0  # largest / smallest training class
FEW_TRAIN = 3  # a class with fewer training examples is more likely a broken label than a class
MAX_LABEL_ISSUES = 100
FOLDS = 5


@dataclass
class Entry:
    item: str
    split: str
    label: str  # the class name (a number for regression, names joined by ";" for multilabel)
    target: int  # the class index (-1 for regression and multilabel)


def entries_of(spec: Any) -> list[Entry]:
    """The inputs of a :class:`graftkit.data.spec.DataSpec`, split by split in its order."""
    classification = spec.task == "classification"

    def label(t: Any) -> str:
        if classification:
            return spec.classes[int(t)]
        if spec.task == "multilabel":  # its names, as the CSV gives them
            return ";".join(c for c, v in zip(spec.classes, t) if v)
        return f"{t:g}"

    return [Entry(str(item), split, label(t), int(t) if classification else -1)
            for split, items in spec.splits.items() for item, t in items]


def quick(spec: Any, content_key: Callable[[str], str]) -> Audit:
    """The cheap audit ``graft train`` runs: exact duplicates, leaks and label conflicts by
    content digest, and the class balance."""
    entries = entries_of(spec)
    classes = list(spec.classes) if spec.task == "classification" else []
    table = counts(entries, classes)
    a = Audit(classes, table, checks=["exact duplicates", "leaks", "label conflicts",
                                      "balance"])
    a.findings = exact(entries, [content_key(e.item) for e in entries]) + balance(table, classes)
    return a


@dataclass
class Finding:
    kind: str
    items: list[str]
    splits: list[str]
    labels: list[str]
    score: float
    action: str
    detail: str = ""
    suggested: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


@dataclass
class Audit:
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> n
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)  # stat -> summary
    checks: list[str] = field(default_factory=list)  # what was looked for

    def of(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = defaultdict(int)
        for f in self.findings:
            kinds[f.kind] += 1
        train = self.counts.get("train", {}) if self.classes else {}  # none for regression
        ratio = (max(train.values()) / max(1, min(train.values()))) if train else None
        return {"checks": self.checks, "findings": dict(sorted(kinds.items())),
                "imbalance_ratio": None if ratio is None else round(ratio, 2)}

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "classes": self.classes, "counts": self.counts,
                "stats": self.stats, "findings": [f.to_dict() for f in self.findings]}


def _pair_kind(splits: Sequence[str], within: str, across: str) -> str:
    return across if len(set(splits)) > 1 else within


def _leak_action(splits: Sequence[str]) -> str:
    if "train" in splits:
        return "drop the copies outside train (--drop-leaks), or re-split"
    return "drop the test copies (--drop-leaks), or re-split"


def exact(entries: Sequence[Entry], content: Sequence[str]) -> list[Finding]:
    """Groups of inputs with the same content: duplicates, leaks across splits, and their label
    conflicts."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(content):
        groups[key].append(i)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        es = [entries[i] for i in members]
        splits, labels = [e.split for e in es], [e.label for e in es]
        kind = _pair_kind(splits, "exact_duplicate", "leak")
        action = _leak_action(splits) if kind == "leak" else (
            "keep one copy (--drop-duplicates)")
        out.append(Finding(kind, [e.item for e in es], splits, labels, 1.0, action,
                           f"{len(es)} copies"))
        if len(set(labels)) > 1:
            out.append(Finding("label_conflict", [e.item for e in es], splits, labels, 1.0,
                               "the same input under different labels: fix the wrong one",
                               f"labels {', '.join(sorted(set(labels)))}"))
    return out


def counts(entries: Sequence[Entry], classes: Sequence[str]) -> dict[str, dict[str, int]]:
    """split -> class -> examples (split -> {"all": n} for regression)."""
    out: dict[str, dict[str, int]] = {}
    for e in entries:
        row = out.setdefault(e.split, {c: 0 for c in classes} if classes else {"all": 0})
        row[e.label if classes else "all"] += 1
    return out


def balance(table: dict[str, dict[str, int]], classes: Sequence[str]) -> list[Finding]:
    if not classes:
        return []
    out = []
    train = table.get("train", {})
    if train and min(train.values()) > 0:
        hi, lo = max(train, key=train.__getitem__), min(train, key=train.__getitem__)
        ratio = train[hi] / train[lo]
        if ratio >= IMBALANCED:
            out.append(Finding("imbalance", [], ["train"], [hi, lo], round(ratio, 2),
                               "train with loss.class_weights=auto, or add data of the small "
                               "classes", f"{hi}: {train[hi]} vs {lo}: {train[lo]} training "
                               "examples"))
    for c in classes:
        if train and train.get(c, 0) < FEW_TRAIN:
            n = train.get(c, 0)
            out.append(Finding("few_train", [], ["train"], [c], float(n),
                               "check this label (a typo, or a CSV row broken by a stray "
                               "quote) or add examples of the class",
                               f"{n} training example{'' if n == 1 else 's'}"))
    val = table.get("val", {})
    for c in classes:
        if val and val.get(c, 0) < FEW_VAL:
            out.append(Finding("few_val", [], ["val"], [c], float(val.get(c, 0)),
                               "add validation examples of this class, or re-split stratified "
                               "with a larger data.val_fraction",
                               f"{val.get(c, 0)} validation examples: one error moves its "
                               f"recall by {100 / max(1, val.get(c, 0)):.0f} points"))
    return out


def neighbours(features: np.ndarray, k: int = NEIGHBOURS, block: int = 2048
               ) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the ``k`` most cosine-similar other rows: (indices, similarities), both
    (N, k), best first. Blocked matrix products: memory O(block x N), no pair loop."""
    import torch

    x = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    n, k = len(x), min(k, len(x) - 1)
    idx, sim = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    if k <= 0:
        return idx, sim
    for start in range(0, n, block):
        s = x[start:start + block] @ x.T
        s[torch.arange(len(s)), torch.arange(start, start + len(s))] = -2.0  # not oneself
        top = torch.topk(s, k, dim=1)
        idx[start:start + len(s)], sim[start:start + len(s)] = top.indices.numpy(), \
            top.values.numpy()
    return idx, sim


def near(entries: Sequence[Entry], content: Sequence[str], nbr_idx: np.ndarray,
         nbr_sim: np.ndarray, near_keys: Sequence[Any], match: Callable[[Any, Any], bool],
         cosine: float = NEAR_COSINE) -> list[Finding]:
    """Near-duplicate pairs among the nearest neighbours, and among inputs with the very same
    near key (each to the first of its group); exact copies are reported by ``exact``."""
    candidates: list[list[tuple[int, float]]] = [
        [(int(j), float(s)) for j, s in zip(nbr_idx[i], nbr_sim[i])] for i in range(len(entries))]
    first: dict[Any, int] = {}
    for i, key in enumerate(near_keys):
        if key is None:
            continue
        if key in first:
            candidates[first[key]].append((i, float("nan")))
        else:
            first[key] = i
    out, seen = [], set()
    for i in range(len(entries)):
        for j, s in candidates[i]:
            pair = (min(i, j), max(i, j))
            if pair in seen or content[i] == content[j]:
                continue
            keyed = match(near_keys[i], near_keys[j])
            if not keyed and not s >= cosine:
                continue
            seen.add(pair)
            a, b = entries[pair[0]], entries[pair[1]]
            splits = [a.split, b.split]
            kind = _pair_kind(splits, "near_duplicate", "near_leak")
            how = "near key and features" if keyed and s >= cosine else (
                "near key" if keyed else "features")
            if s != s:  # not a neighbour: its similarity is not known
                s, how = 1.0, "the same near key"
            action = _leak_action(splits) if kind == "near_leak" else "keep one (or both, if " \
                "they are distinct examples)"
            out.append(Finding(kind, [a.item, b.item], splits, [a.label, b.label],
                               round(float(s), 4), action, f"cosine {s:.3f}; matched by {how}"
                               if how != "the same near key" else f"matched by {how}"))
    return sorted(out, key=lambda f: -f.score)


def label_issues(entries: Sequence[Entry], features: np.ndarray, classes: Sequence[str],
                 seed: int = 0, limit: int = MAX_LABEL_ISSUES) -> tuple[list[Finding], str]:
    """Likely label errors from out-of-sample probabilities (k-fold logistic regression on the
    features, seeded) ranked by cleanlab; and a note when the check could not run."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.array([e.target for e in entries])
    per_class = np.bincount(y, minlength=len(classes))
    folds = int(min(FOLDS, per_class[per_class > 0].min())) if len(y) else 0
    if folds < 2 or (per_class > 0).sum() < 2:
        return [], "label issues: skipped (a class has fewer than 2 examples)"
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    probs = cross_val_predict(probe, features, y, cv=StratifiedKFold(folds, shuffle=True,
                                                                      random_state=seed),
                              method="predict_proba")
    ranked = find_label_issues(y, probs, return_indices_ranked_by="self_confidence")
    out = []
    for i in ranked[:limit]:
        e, p = entries[int(i)], probs[int(i)]
        best = int(np.argmax(p))
        out.append(Finding("label_issue", [e.item], [e.split], [e.label],
                           round(float(1.0 - p[e.target]), 4),
                           f"check the label: the model says {classes[best]} "
                           f"({p[best]:.0%}), given {e.label} ({p[e.target]:.0%})",
                           suggested=classes[best]))
    accuracy = float((probs.argmax(1) == y).mean())
    return out, (f"label issues: {folds}-fold probe, out-of-sample accuracy {accuracy:.3f}; "
                 f"{len(ranked)} flagged, the {len(out)} most likely listed")


def outliers(entries: Sequence[Entry], nbr_sim: np.ndarray) -> list[Finding]:
    if nbr_sim.size == 0 or len(entries) < 20:
        return []
    dist = 1.0 - nbr_sim.mean(axis=1)
    logd = np.log(np.clip(dist, 1e-6, None))  # distances are skewed: the fences on a log scale
    q1, q3 = np.percentile(logd, [25, 75])
    cut = float(np.exp(q3 + 3 * (q3 - q1)))
    out = [Finding("outlier", [entries[i].item], [entries[i].split],
                   [entries[i].label], round(float(dist[i]), 4),
                   "look at it: a wrong file, another domain, or a rare case worth more data",
                   f"mean cosine distance to its {nbr_sim.shape[1]} nearest inputs "
                   f"{dist[i]:.3f} (cut-off {cut:.3f})")
           for i in np.flatnonzero(dist > cut)]
    return sorted(out, key=lambda f: -f.score)


def odd_stats(entries: Sequence[Entry], stats: Sequence[dict[str, float]]
              ) -> tuple[list[Finding], dict[str, dict[str, float]]]:
    """The distribution of each statistic, and inputs whose log-statistic is a robust z-score of
    more than 5 away from the median."""
    keys = sorted({k for s in stats for k in s})
    summary, out = {}, []
    for k in keys:
        rows = [(i, s[k]) for i, s in enumerate(stats) if k in s and s[k] > 0]
        if not rows:
            continue
        v = np.array([x for _, x in rows])
        summary[k] = {"min": float(v.min()), "median": float(np.median(v)),
                      "max": float(v.max()), "p5": float(np.percentile(v, 5)),
                      "p95": float(np.percentile(v, 95))}
        logv = np.log(v)
        med = float(np.median(logv))
        mad = float(np.median(np.abs(logv - med))) * 1.4826
        if mad <= 1e-9:
            continue
        for (i, x), z in zip(rows, (logv - med) / mad):
            if abs(z) > 5 and abs(math.log(x) - med) > math.log(2):  # and at least 2x off
                e = entries[i]
                out.append(Finding("odd_input", [e.item], [e.split], [e.label],
                                   round(float(abs(z)), 2), "check the file",
                                   f"{k} {x:g} (median {math.exp(med):g})"))
    return sorted(out, key=lambda f: -f.score), summary


def drop(spec: Any, audit: Audit, duplicates: bool, leaks: bool) -> list[dict[str, str]]:
    """Take exact copies out of ``spec``'s splits (in place): with ``leaks`` the copies outside
    train (outside val for a val/test leak), with ``duplicates`` all but the first copy in each
    split. Returns what was dropped, as the data report's skipped rows (with the reason)."""
    gone: list[dict[str, str]] = []
    for f in audit.findings:
        if f.kind not in ("exact_duplicate", "leak"):
            continue
        kept: dict[str, str] = {}
        home = "train" if "train" in f.splits else "val"
        for item, split in zip(f.items, f.splits):
            if leaks and f.kind == "leak" and split != home:
                first = f.items[f.splits.index(home)]
                why = f"dropped (--drop-leaks): a copy of {first} in {home}"
            elif duplicates and split in kept:
                why = f"dropped (--drop-duplicates): a copy of {kept[split]}"
            else:
                kept.setdefault(split, item)
                continue
            gone.append({"path": item, "split": split, "reason": why})
    # one row dropped per copy: a manifest that lists one file twice keeps its first row
    left = Counter((g["split"], g["path"]) for g in gone)
    for split, items in spec.splits.items():
        keep = []
        for i, t in reversed(items):  # the last rows of a repeated file go first
            if left[(split, str(i))] > 0:
                left[(split, str(i))] -= 1
            else:
                keep.append((i, t))
        spec.splits[split] = keep[::-1]
    return gone
