"""``--model auto``: choose the backbone, or a combination of backbones, by cached linear probes.

Every built-in backbone of the data's modality is loaded in turn and its features of the
training and validation splits are extracted once (into the feature cache, so the winner's own
probe reads them back from memory). Each is scored by a logistic regression on its standardised
features, by stratified k-fold cross-validation on the training split: the validation split plays
no part in the choice and stays an honest estimate of the winner. The validation accuracy of the
regression fitted on all of train is in the table for information, for the backbones that were
among the best :data:`TOP` when scored (a weaker one costs its training split's extraction
alone: its val split is never read). Where the modality can
combine backbones (images), the concatenated features of the best :data:`TOP` singles are scored
the same way, in pairs and all together; a combination pays :data:`EXTRA_BACKBONE_COST` of
accuracy per extra backbone (it costs their inference time at every prediction), ties go to
the lower log loss.

``model.budget`` (seconds) bounds the time: no backbone is started once the time spent plus the
last one's time would exceed it; the skipped ones are listed with the reason, as are any that
cannot load (weights package not installed).

What comes out is :data:`FILE` in the run directory (the ranking, with each candidate's
accuracy, log loss and seconds) and the winner's name, which replaces ``auto`` in the run's saved
config.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, GraftError
from ..models.base import SEPARATOR

AUTO = "auto"
FILE = "model_selection.json"
FOLDS = 5
TOP = 3  # combinations are drawn from the best this many single backbones
EXTRA_BACKBONE_COST = 0.005  # accuracy a combination must gain per extra backbone


@dataclass
class Scored:
    name: str
    parts: list[str]
    cv_accuracy: float
    cv_log_loss: float
    val_accuracy: float | None
    num_features: int
    seconds: float  # loading and extraction (a combination: the sum of its parts') + fitting

    def key(self) -> tuple[float, float]:
        return (self.cv_accuracy - EXTRA_BACKBONE_COST * (len(self.parts) - 1), -self.cv_log_loss)

    def line(self) -> str:
        """The terminal's line for this candidate."""
        val = f", val {self.val_accuracy:.4f}" if self.val_accuracy is not None else ""
        return f"  {self.name}: cv accuracy {self.cv_accuracy:.4f}{val} ({self.seconds:.1f} s)"

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "parts": self.parts, "cv_accuracy": round(self.cv_accuracy, 4),
                "cv_log_loss": round(self.cv_log_loss, 4),
                "val_accuracy": None if self.val_accuracy is None else round(self.val_accuracy, 4),
                "num_features": self.num_features, "seconds": round(self.seconds, 2)}


def check(cfg: Any, candidates: Sequence[str]) -> None:
    """What ``model.name: auto`` needs of the config, before any heavy work."""
    m = cfg.model
    if not candidates:
        raise ConfigError(f"config key 'model.name': auto has no built-in {cfg.data.modality} "
                          "backbones to choose from; name a model")
    if m.weights:
        raise ConfigError("config key 'model.weights': auto chooses among the built-in "
                          "backbones; a weights file is for one named model")
    if m.image_size:
        raise ConfigError("config key 'model.image_size': auto ranks each backbone at its own "
                          "input size (and may combine several); drop model.image_size")
    if not m.pretrained:
        raise ConfigError("config key 'model.pretrained': auto ranks pretrained backbones by "
                          "their features; random ones have nothing to rank")
    if cfg.task != "classification":
        raise ConfigError("config key 'model.name': auto ranks backbones by single-label "
                          f"classification probes; name a model for a {cfg.task} run")


def cv_scores(x: np.ndarray, y: np.ndarray, seed: int, folds: int = FOLDS
              ) -> tuple[float, float]:
    """Stratified k-fold accuracy and log loss of a logistic regression on standardised ``x``
    (fewer folds when a class has fewer examples; at least 2)."""
    from sklearn.model_selection import StratifiedKFold

    k = int(min(folds, np.bincount(y).min()))
    if k < 2:
        raise GraftError("model.name auto: every class needs 2 training examples to "
                         "cross-validate the probes")
    correct, loss = 0, 0.0
    n_classes = int(y.max()) + 1
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
        probs = _fit(x[tr], y[tr], n_classes).predict(x[te])
        correct += int((probs.argmax(1) == y[te]).sum())
        loss += float(-np.log(np.clip(probs[np.arange(len(te)), y[te]], 1e-12, None)).sum())
    return correct / len(y), loss / len(y)


class _Probe:
    def __init__(self, mean: np.ndarray, std: np.ndarray, clf: Any, n_classes: int) -> None:
        self.mean, self.std, self.clf, self.n_classes = mean, std, clf, n_classes

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, K) probabilities over every class (one the fold lacked gets 0)."""
        p = self.clf.predict_proba((x - self.mean) / self.std)
        out = np.zeros((len(x), self.n_classes))
        out[:, self.clf.classes_] = p
        return out


def _fit(x: np.ndarray, y: np.ndarray, n_classes: int) -> _Probe:
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=2000)
    clf.fit((x - mean) / std, y)
    return _Probe(mean, std, clf, n_classes)


def select(candidates: Sequence[str],
           extract: Callable[[str], tuple[tuple[Any, Any], Callable[[], tuple[Any, Any]]]],
           combines: bool, seed: int, budget: float | None, out: Path,
           line: Callable[[str], None]) -> tuple[str, dict[str, Any]]:
    """Score ``candidates`` and return the winner's name and the ranking (also written to
    ``out / FILE``). ``extract(name)`` -> ``((train features, targets), val)`` as tensors, where
    ``val()`` gives the val split's (``(None, None)`` without one): it is called only for a
    backbone among the best :data:`TOP` by cv when it is scored (the ones that can win or join a
    combination; a later backbone can only push it down), so a weak one costs its training
    split's extraction alone."""
    import json

    t0 = time.perf_counter()
    feats: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]] = {}
    scored: list[Scored] = []
    skipped: list[dict[str, str]] = []
    last = 0.0
    for name in candidates:
        spent = time.perf_counter() - t0
        if budget is not None and spent + last > budget:
            skipped.append({"name": name, "reason": f"budget: {spent:.0f} s of {budget:g} s spent"
                            + (f", the last backbone took {last:.0f} s" if last else "")})
            continue
        t1 = time.perf_counter()
        try:
            (xt, yt), val = extract(name)
            xt, yt = xt.float().cpu().numpy(), yt.long().cpu().numpy()
            acc, loss = cv_scores(xt, yt, seed)
            xv = yv = None
            if sum(o.key() > (acc, -loss) for o in scored) < TOP:
                xv_t, yv_t = val()
                if xv_t is not None and len(xv_t):
                    xv, yv = xv_t.float().cpu().numpy(), yv_t.long().cpu().numpy()
        except GraftError as e:  # e.g. its weights package is not installed
            skipped.append({"name": name, "reason": str(e)})
            line(f"  {name}: skipped ({e})")
            continue
        feats[name] = (xt, yt, xv, yv)
        s = _score(name, [name], xt, yt, xv, yv, seed, time.perf_counter() - t1, (acc, loss))
        last = s.seconds
        scored.append(s)
        line(s.line())
    if not scored:
        raise GraftError("model.name auto: no backbone could be scored: " + "; ".join(
            f"{s['name']}: {s['reason']}" for s in skipped))
    singles = sorted(scored, key=Scored.key, reverse=True)
    if combines and len(singles) > 1:
        top = [s.name for s in singles[:TOP]]
        for r in range(2, len(top) + 1):
            for combo in itertools.combinations(top, r):
                t1 = time.perf_counter()
                xt = np.concatenate([feats[n][0] for n in combo], 1)
                xv = None if feats[combo[0]][2] is None else np.concatenate(
                    [feats[n][2] for n in combo], 1)
                own = sum(next(s.seconds for s in scored if s.name == n) for n in combo)
                s = _score(SEPARATOR.join(combo), list(combo), xt, feats[combo[0]][1], xv,
                           feats[combo[0]][3], seed, own + time.perf_counter() - t1)
                scored.append(s)
                line(s.line())
    ranking = sorted(scored, key=Scored.key, reverse=True)
    chosen = ranking[0]
    report = {
        "chosen": chosen.name,
        "score": f"{FOLDS}-fold cross-validated accuracy on the training split of a logistic "
                 "regression on each backbone's cached, standardised features (log loss breaks "
                 f"ties; a combination pays {EXTRA_BACKBONE_COST:g} accuracy per extra "
                 "backbone); val_accuracy: the same regression fitted on all of train, for "
                 f"information, not used to choose (measured for the backbones among the best "
                 f"{TOP} by cv when scored; null for the others and for combinations of them)",
        "candidates": [s.row() for s in ranking],
        "skipped": skipped,
        "budget_s": budget,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / FILE).write_text(json.dumps(report, indent=2))
    return chosen.name, report


def _score(name: str, parts: list[str], xt: np.ndarray, yt: np.ndarray, xv: np.ndarray | None,
           yv: np.ndarray | None, seed: int, seconds: float,
           cv: tuple[float, float] | None = None) -> Scored:
    t0 = time.perf_counter()
    acc, loss = cv or cv_scores(xt, yt, seed)
    val = None
    if xv is not None and yv is not None:
        val = float((_fit(xt, yt, int(yt.max()) + 1).predict(xv).argmax(1) == yv).mean())
    return Scored(name, parts, acc, loss, val, int(xt.shape[1]),
                  seconds + time.perf_counter() - t0)


def scratch_dir(out: Path) -> tempfile.TemporaryDirectory:
    """Where a candidate may write its assets (a text model's tokenizer) while it is scored."""
    out.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=out, prefix=".select-")
