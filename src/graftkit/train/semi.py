"""Semi-supervised training: pseudo-labels for an unlabeled pool, and FixMatch's two views.

Self-training (a stage with ``pseudo_round`` r > 0): when the stage starts, the current model
predicts the pool (on cached features for a head-only stage), the probabilities are calibrated
with a temperature fitted on the labeled validation split, and a prediction is accepted when its
calibrated probability reaches ``threshold``. With ``balance`` a class takes at most its share
of the labeled training data times the pool, times r / R in round r of R (a curriculum: the most
confident first), so one class cannot take over the pool. The same rule applied to the
validation split says how precise the accepted labels are likely to be; where the pool's true
labels are known (``data.unlabeled_rest``) their real precision is reported too. They are never
trained on.

FixMatch (Sohn et al. 2020, a stage with ``fixmatch``): each step also takes ``mu`` unlabeled
inputs per labeled one, in two views: the weak view's prediction (no gradient) is the target of
the strong view wherever its probability reaches the threshold (``step.fixmatch_step``).

Each round's choice is saved in the run directory (``semi/round_<r>.safetensors`` and
``semi.json``), so a resumed run trains on the same pseudo-labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from ..evaluate.calibration import fit_temperature
from ..run import SEMI, SEMI_ROUNDS
from .checkpoint import atomic_save

ROUNDS_FILE, ROUND_DIR = SEMI, SEMI_ROUNDS  # in the run directory


@dataclass(frozen=True)
class SemiSettings:
    threshold: float = 0.95
    rounds: int = 3
    balance: bool = True
    mu: int = 7
    lambda_u: float = 1.0
    align: bool = True  # FixMatch: distribution alignment of the weak view (ReMixMatch)
    weak_view: str = "light"  # FixMatch's augmentation presets (the modality's)
    strong_view: str = "strong"


def select(probs: torch.Tensor, threshold: float, prior: torch.Tensor, frac: float,
           balance: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and labels of the accepted predictions among ``probs`` (N, K): probability at
    least ``threshold``. With ``balance`` class c's quota is ``prior[c] * N * frac`` and every
    class fills the same share of its quota, the share of the class that can fill least (the
    most confident first): the accepted labels keep the labeled class balance, so a class the
    model is unsure of is not swamped by one it is sure of. Indices come back sorted."""
    conf, pred = probs.max(1)
    found = [torch.nonzero((pred == c) & (conf >= threshold)).flatten()
             for c in range(probs.shape[1])]
    found = [idx[conf[idx].argsort(descending=True)] for idx in found]
    if balance:
        quota = [float(prior[c]) * len(probs) * frac for c in range(probs.shape[1])]
        fill = min([min(1.0, len(idx) / q) for idx, q in zip(found, quota) if q > 0] or [0.0])
        found = [idx[:math.floor(q * fill + 1e-9)] for idx, q in zip(found, quota)]
    idx = torch.cat(found).sort().values if found else torch.zeros(0, dtype=torch.long)
    return idx, pred[idx]


def choose(pool_logits: torch.Tensor, val_logits: torch.Tensor, val_targets: torch.Tensor,
           train_targets: torch.Tensor, classes: Sequence[str], s: SemiSettings, round_: int,
           hidden: Sequence[float] | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Round ``round_``'s pseudo-labels of the pool and what to record about them."""
    k = len(classes)
    prior = torch.bincount(train_targets.long(), minlength=k).float()
    prior = prior / prior.sum()
    frac = min(1.0, round_ / s.rounds)
    t = fit_temperature(val_logits, val_targets) if len(val_targets) >= 2 else 1.0
    probs = (pool_logits.float() / t).softmax(-1)
    idx, labels = select(probs, s.threshold, prior, frac, s.balance)
    v_idx, v_lab = select((val_logits.float() / t).softmax(-1), s.threshold, prior, frac,
                          s.balance)
    counts = torch.bincount(labels, minlength=k).tolist()
    info: dict[str, Any] = {
        "round": round_, "threshold": s.threshold, "temperature": t, "balance": s.balance,
        "share_of_pool_allowed": frac if s.balance else 1.0, "pool": len(probs),
        "accepted": len(idx), "accepted_per_class": dict(zip(classes, counts)),
        "max_confidence": float(probs.max()) if len(probs) else None,
        # the same rule on the labeled validation split: how precise the accepted labels are
        "val_accepted": len(v_idx),
        "val_precision": (float((v_lab == val_targets[v_idx].long()).float().mean())
                          if len(v_idx) else None),
        "pool_precision": None,
    }
    if hidden is not None and len(idx):  # data.unlabeled_rest: the labels training never saw
        truth = torch.tensor(list(hidden), dtype=torch.long)[idx]
        known = truth >= 0  # -1: a pool input whose label nobody knows
        if known.any():
            lab, tru = labels[known], truth[known]
            info["pool_precision"] = float((lab == tru).float().mean())
            info["pool_precision_n"] = int(known.sum())
            info["pool_precision_per_class"] = {
                c: (float((lab[lab == i] == tru[lab == i]).float().mean())
                    if (lab == i).any() else None) for i, c in enumerate(classes)}
    if not len(idx):
        conf, pred = probs.max(1)
        sure = [c for i, c in enumerate(classes) if ((pred == i) & (conf >= s.threshold)).any()]
        why = (f"no prediction reached it (highest calibrated probability "
               f"{info['max_confidence'] or 0:.3f})" if not sure else
               f"{k - len(sure)} of {k} classes have no prediction that reached it (e.g. "
               f"{next(c for c in classes if c not in sure)!r}), and semi.balance keeps the "
               "classes in step")
        info["warning"] = (f"self-training round {round_}: no pseudo-label accepted at the "
                           f"threshold {s.threshold:g}: {why}; this round goes on training the "
                           "model so far on the labels alone (lower semi.threshold to accept "
                           "some)")
    return idx, labels, info


class RoundStore:
    """Each round's pseudo-labels (indices into the pool, labels) and the rounds' records."""

    def __init__(self, run_dir: Path) -> None:
        self.dir, self.log = run_dir / ROUND_DIR, run_dir / ROUNDS_FILE

    def load(self, round_: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        f = self.dir / f"round_{round_}.safetensors"
        if not f.is_file():
            return None
        t = load_file(str(f))
        return t["indices"], t["labels"]

    def save(self, round_: int, idx: torch.Tensor, labels: torch.Tensor, info: dict[str, Any]
             ) -> None:
        self.dir.mkdir(exist_ok=True)
        atomic_save({"indices": idx.long().contiguous(), "labels": labels.long().contiguous()},
                    self.dir / f"round_{round_}.safetensors")
        rounds = [r for r in self.records() if r["round"] != round_] + [info]
        tmp = self.log.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(rounds, key=lambda r: r["round"]), indent=1))
        tmp.replace(self.log)

    def records(self) -> list[dict[str, Any]]:
        return json.loads(self.log.read_text()) if self.log.is_file() else []


class TwoViews(Dataset):
    """The unlabeled pool as ``(weak view, strong view, hidden target or -1)``: two datasets
    of the same items under the modality's weak and strong presets."""

    def __init__(self, weak: Dataset, strong: Dataset) -> None:
        self.weak, self.strong = weak, strong

    def __len__(self) -> int:
        return len(self.weak)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any, Any]:
        xw, y = self.weak[i]
        xs, _ = self.strong[i]
        return xw, xs, y


class TwoViewCollate:
    """Collates ``TwoViews`` items with the model's own collate, one view at a time."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, batch: Sequence[tuple[Any, Any, Any]]) -> tuple[Any, Any, torch.Tensor]:
        weak = [(w, y) for w, _, y in batch]
        strong = [(s, y) for _, s, y in batch]
        if self.collate is None:
            from torch.utils.data import default_collate

            xw, y = default_collate(weak)
            xs, _ = default_collate(strong)
        else:
            xw, y = self.collate(weak)
            xs, _ = self.collate(strong)
        return xw, xs, y
