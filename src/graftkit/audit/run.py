"""``graft audit DATA``: the full data audit, written as ``audit.json``, ``findings.csv`` and
``audit.html`` in one folder.

The data is read as ``graft train`` reads it (same discovery, skipped files and split), so the
audit describes exactly what a run would train and validate on. The modality gives each input's
content digest, near key and statistics; the backbone's features come through the training loop's
feature cache (same key), so a linear probe trained afterwards on the same data and backbone
extracts nothing again.
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import modalities
from .. import run as rd
from ..config import Config
from ..errors import GraftError
from ..models.base import SEPARATOR
from ..threads import use_threads
from ..train.progress import Reporter
from ..train.select import AUTO
from . import findings as F

AUDIT, FINDINGS, PAGE = "audit.json", "findings.csv", "audit.html"
SHOWN = 24  # findings of each kind drawn on the page (all are in the CSV and JSON)


def _each(reporter: Reporter, what: str, items: list[str], fn: Any) -> list[Any]:
    reporter.start(what, len(items))
    try:
        out = []
        for x in items:
            out.append(fn(x))
            reporter.advance()
        return out
    finally:
        reporter.stop()


def features(cfg: Config, spec: Any, modality: Any, reporter: Reporter) -> np.ndarray:
    """Backbone features of every input (split by split, in the spec's order), through the
    training loop's cache."""
    import torch

    from ..train.device import resolve_device, resolve_precision
    from ..train.loop import features_for
    from ..train.settings import LoopData, LoopSettings

    device = resolve_device(cfg.train.device)
    n_out = len(spec.classes) if cfg.task == "classification" else 1
    with tempfile.TemporaryDirectory() as assets:  # a text model saves its tokenizer here
        model, _ = modality.create_model(cfg.model, spec, max(n_out, 1), Path(assets), False)
    model = model.to(device)
    settings = LoopSettings(task=cfg.task, classes=spec.classes, device=device,
                            amp_dtype=resolve_precision(cfg.train.precision, device),
                            eval_batch_size=modality.eval_batch(cfg.data, device),
                            num_workers=cfg.data.num_workers,
                            feature_cache=cfg.train.feature_cache)
    data = LoopData(spec.splits["train"], spec.splits.get("val", []), spec.fingerprint())
    parts = []
    with torch.no_grad():
        for split, items in spec.splits.items():
            parts.append(features_for(model, items, split, data, settings, reporter).tensors[0]
                         .float().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


def one_backbone(cfg: Config) -> Config:
    """``cfg`` with its modality's default model in place of ``auto`` or a combination ``a+b``:
    ranking or combining backbones is for training; one backbone's features find the near
    duplicates and label issues. ``cfg`` itself when it names one model."""
    if cfg.model.name != AUTO and SEPARATOR not in (cfg.model.name or ""):
        return cfg
    name = modalities.get(cfg.data.modality).default_model
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": name})})


def audit_data(cfg: Config, out: Path, quiet: bool = False, label_issues: bool = True
               ) -> F.Audit:
    """The full audit of ``cfg.data``, written into ``out``."""
    rd.not_a_file(out)
    if out.is_dir() and any(out.iterdir()) and not (out / AUDIT).is_file():
        raise GraftError(f"--out {str(out)!r} is not empty and holds no earlier audit; choose "
                         "another folder")
    use_threads(cfg.train.threads)
    reporter = Reporter(quiet)
    t0 = time.perf_counter()
    modality = modalities.get(cfg.data.modality)
    reporter.line(f"[bold]audit[/] {cfg.data.path}")
    if one_backbone(cfg) is not cfg:
        reporter.line(f"  --model {cfg.model.name}: the audit reads one backbone's features; "
                      f"using {modality.default_model}")
        cfg = one_backbone(cfg)
    spec = modality.discover(cfg.data, cfg.task, progress=reporter)
    entries = F.entries_of(spec)
    items = [e.item for e in entries]
    classes = list(spec.classes) if cfg.task == "classification" else []
    table = F.counts(entries, classes)
    audit = F.Audit(classes, table)
    content = _each(reporter, "content digests", items, modality.content_key)
    audit.findings += F.exact(entries, content)
    near_keys = _each(reporter, "near keys", items, modality.near_key)
    stats = _each(reporter, "statistics", items, modality.item_stats)
    odd, audit.stats = F.odd_stats(entries, stats)
    reporter.line(f"[bold]model[/] {cfg.model.name} (features for near duplicates, label "
                  "issues and outliers)")
    feats = features(cfg, spec, modality, reporter)
    nbr_idx, nbr_sim = F.neighbours(feats)
    audit.findings += F.near(entries, content, nbr_idx, nbr_sim, near_keys, modality.near_match)
    audit.checks = ["exact duplicates", "leaks", "label conflicts", "near duplicates",
                    "near leaks", "balance", "outliers", "input statistics"]
    if label_issues and classes:
        issues, note = F.label_issues(entries, feats, classes, seed=cfg.data.split_seed)
        audit.findings += issues
        audit.checks.append(note)
    audit.findings += F.outliers(entries, nbr_sim) + odd + F.balance(table, classes)
    write(audit, out, {"data": str(cfg.data.path), "modality": modality.name,
                       "model": cfg.model.name, "n": len(entries), "layout": spec.layout,
                       "skipped": spec.skipped, "seconds": round(time.perf_counter() - t0, 1)},
          modality)
    return audit


def write(audit: F.Audit, out: Path, about: dict[str, Any], modality: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rd.write_json(out / AUDIT, {"about": about, **audit.to_dict()})
    tmp = out / f".{FINDINGS}.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "score", "files", "splits", "labels", "suggested", "action",
                    "detail"])
        for x in audit.findings:
            w.writerow([x.kind, x.score, " | ".join(x.items), " | ".join(x.splits),
                        " | ".join(x.labels), x.suggested or "", x.action, x.detail])
    tmp.replace(out / FINDINGS)
    _page(audit, out, about, modality)


def _page(audit: F.Audit, out: Path, about: dict[str, Any], modality: Any) -> None:
    from jinja2 import ChoiceLoader, Environment, PackageLoader, select_autoescape

    shown: dict[str, list[dict[str, Any]]] = {}
    for f in audit.findings:
        rows = shown.setdefault(f.kind, [])
        if len(rows) < SHOWN:
            # what to show of each input: a thumbnail or the text (the report's gallery)
            views = modality.gallery([{"item": i} for i in f.items], None, audit.classes,
                                     None, out)
            rows.append({**f.to_dict(), "views": views})
    env = Environment(loader=ChoiceLoader([PackageLoader("graftkit.audit", "templates"),
                                           PackageLoader("graftkit.evaluate", "templates")]),
                      autoescape=select_autoescape(["html", "j2"]))
    page = env.get_template("audit.html.j2").render(
        about=about, summary=audit.summary(), counts=audit.counts, classes=audit.classes,
        stats=audit.stats, shown=shown, n_all={k: len(audit.of(k)) for k in shown},
        titles=TITLES)
    (out / PAGE).write_text(page, encoding="utf-8")


TITLES = {
    "leak": "Leaks: the same input in two splits",
    "near_leak": "Near leaks: near-identical inputs in two splits",
    "label_conflict": "Label conflicts: the same input under different labels",
    "exact_duplicate": "Exact duplicates within a split",
    "near_duplicate": "Near duplicates within a split",
    "label_issue": "Likely label errors (cross-validated probe + cleanlab)",
    "outlier": "Outliers: far from every other input",
    "odd_input": "Odd inputs: a size or length far from the rest",
    "imbalance": "Class imbalance",
    "few_train": "Classes with almost no training examples",
    "few_val": "Classes with too few validation examples",
}
