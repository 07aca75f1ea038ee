"""Write an export bundle from a finished run, checked against the eager model."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import modalities
from .. import run as rd
from ..errors import GraftError
from ..evaluate.calibration import Calibration
from ..evaluate.reference import REFERENCE
from ..inference import LoadedRun, ensure_reference, run_split
from ..modalities.base import ExportSignature
from . import light
from .formats import EXPORTERS, MIN_OPSET, OUTPUT, Exporter

CARD = "MODEL_CARD.md"
PARITY_N = 32  # validation inputs the export is checked on
PARITY_TOL = 1e-4  # max |dp| allowed between the exported and the eager model
PARITY_BATCH = 8


def export_run(run_dir: str | Path, fmt: str, out_dir: str | Path, overwrite: bool = False,
               opset: int | None = None) -> dict[str, Any]:
    """Export a finished run as a bundle in ``out_dir`` (model file, bundle.json, MODEL_CARD.md)
    and return the bundle.json written, with ``path`` added.

    What the model file needs beside it (a text model's tokenizer) and how inputs are
    preprocessed come from the run's modality. The exported file is loaded back and run on up to
    32 of the run's validation inputs, preprocessed by the bundle's torch-free preprocessor, and
    compared with the eager model on the same inputs; a maximum probability difference above
    1e-4 raises :class:`GraftError` and leaves nothing behind (a bundle being replaced is kept).
    """
    exporter = EXPORTERS.get(fmt)
    if opset is not None and fmt != "onnx":
        raise GraftError(f"--opset is for the onnx format, not {fmt}")
    if opset is not None and opset < MIN_OPSET:
        raise GraftError(f"--opset {opset}: the ONNX exporter writes opset {MIN_OPSET} or newer")
    missing = [m for m in exporter.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise GraftError(f"the {fmt} format needs {', '.join(missing)}: pip install "
                         "'graftkit[export]'")
    run = LoadedRun(run_dir)
    if run.meta.get("status") != "completed":
        raise GraftError(f"run {str(run.path)!r} has not completed (status: "
                         f"{run.meta.get('status')}); finish it with graft train --resume "
                         f"{run.path} before exporting")
    if not run.modality.exportable:
        takes = [n for n in modalities.MODALITIES.names() if modalities.get(n).exportable]
        raise GraftError(f"graft export writes {', '.join(takes)} models; run {str(run.path)!r} "
                         f"has a {run.modality.name} model")
    out = Path(out_dir).expanduser()
    _check_out(out, overwrite, run.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        model = copy.deepcopy(run.model).to(memory_format=torch.contiguous_format)
        sig = run.modality.export_signature(model)
        extra = exporter.write(model, sig, tmp / exporter.filename, opset)
        pre = run.modality.export_assets(model, run.path, tmp)
        bundle = _bundle(run, fmt, exporter, extra, sig, pre)
        bundle["parity"] = _parity(run, tmp, bundle, sig, exporter)
        p = bundle["parity"]
        if not p["passed"]:
            d = "dp" if run.meta["task"] == "classification" else "dy"
            raise GraftError(f"{exporter.title} export does not match the eager model: max |{d}| "
                             f"= {p['max_abs_diff']:.3g} > {PARITY_TOL:g} on {p['n']} "
                             f"{run.modality.noun}s; nothing was written")
        # the model file and what the preprocessing reads (a tokenizer); the card comes next
        bundle["files"] = {f.relative_to(tmp).as_posix(): _file_info(f)
                           for f in sorted(tmp.rglob("*")) if f.is_file()}
        from .card import render_card

        (tmp / CARD).write_text(render_card(run, bundle, out.name), encoding="utf-8")
        bundle["files"][CARD] = _file_info(tmp / CARD)
        ref = _reference(run)
        if ref is not None:  # graft serve's drift baseline travels with the model
            (tmp / REFERENCE).write_text(json.dumps(ref, indent=2) + "\n")
            bundle["files"][REFERENCE] = _file_info(tmp / REFERENCE)
        # Not rd.write_json: its temp file is private (0600); nobody sees tmp before _place.
        (tmp / light.BUNDLE_JSON).write_text(json.dumps(bundle, indent=2) + "\n")
        _place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {**bundle, "path": str(out)}


def _reference(run: Any) -> dict[str, Any] | None:
    """The run's reference.json (computed from its validation split for an older run, without
    writing to the run); None when that data is not available here."""
    try:
        return ensure_reference(run, write=False)
    except GraftError:
        return None


def _check_out(out: Path, overwrite: bool, run_path: Path) -> None:
    """Refuse a non-empty ``out`` unless asked, and then only if it holds a bundle."""
    rd.not_a_file(out)
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not overwrite:
        raise GraftError(f"--out {str(out)!r} is not empty; pass --overwrite to replace the "
                         "bundle there, or choose another folder")
    if not (out / light.BUNDLE_JSON).is_file():
        raise GraftError(f"refusing to overwrite {str(out)!r}: it is not an export bundle (no "
                         f"{light.BUNDLE_JSON})")
    if run_path.resolve().is_relative_to(out.resolve()):
        raise GraftError(f"refusing to overwrite {str(out)!r}: the run being exported is inside "
                         "it")


def _place(tmp: Path, out: Path) -> None:
    """Move the finished bundle to ``out``, replacing what is there (checked by _check_out)."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def _file_info(path: Path) -> dict[str, Any]:
    return {"sha256": light.sha256(path), "bytes": path.stat().st_size}


def _versions(fmt: str) -> dict[str, str]:
    import PIL
    import tokenizers

    v = {**rd.versions(), "numpy": np.__version__, "pillow": PIL.__version__,
         "tokenizers": tokenizers.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime
        import onnxscript

        v.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__,
                 onnxscript=onnxscript.__version__)
    return v


def _bundle(run: Any, fmt: str, exporter: Exporter, extra: dict[str, Any],
            sig: ExportSignature, pre: dict[str, Any]) -> dict[str, Any]:
    meta = run.meta
    k = meta["num_outputs"]
    classification = meta["task"] in ("classification", "multilabel")
    multilabel = meta["task"] == "multilabel"
    cal = {**Calibration.from_meta(meta).to_dict(),
           "fitted_on": (meta.get("calibration") or {}).get("fitted_on")}
    return {
        "format": light.BUNDLE_FORMAT,
        "format_version": light.BUNDLE_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model_format": fmt,
        "model_file": exporter.filename,
        **extra,
        "task": meta["task"],
        "modality": run.modality.name,
        "classes": meta["classes"],
        "num_outputs": k,
        "target_stats": meta.get("target_stats") or {},
        "model": {**meta["model"], "strategy": meta["strategy"]},
        "inputs": sig.inputs,
        "output": {"name": OUTPUT, "shape": ["batch", k], "dtype": "float32",
                   "description": "raw logits: probabilities = sigmoid(logits / "
                   "calibration.temperature), one per label" if multilabel else
                   "raw logits: probabilities = softmax(logits / "
                   "calibration.temperature)" if classification else
                   "standardised value: value = output * target_stats.std + target_stats.mean"},
        "preprocessing": pre,
        "calibration": cal if classification else None,
        "decision": ("every label whose probability >= its calibration.thresholds entry "
                     "(tuned for F1 on validation)") if multilabel else (
                     "if calibration.threshold is set (binary): predict calibration."
                     "positive_class when its probability >= threshold, else the other class; "
                     "otherwise the most probable class") if classification else None,
        "versions": _versions(fmt),
        "source_run": {"path": str(run.path.resolve()), "created": meta.get("created"),
                       "status": meta.get("status"), "best_epoch": meta.get("best_epoch"),
                       "data_fingerprint": (meta.get("data") or {}).get("fingerprint"),
                       "weights_sha256": light.sha256(run.path / rd.WEIGHTS)},
    }


def _parity_inputs(run: Any) -> tuple[list[Any], str]:
    """Up to PARITY_N of the run's validation inputs, decoded, spread over the split (its
    classes); the modality's stand-ins when the run's data cannot be read here."""
    mod = run.modality
    try:
        items, _, used = run_split(run, "val")
        why = f"no readable {mod.noun}s"
    except GraftError as e:
        items, used, why = [], "", str(e)
    decoded = []
    for item, _ in items[::max(1, len(items) // PARITY_N)][:PARITY_N]:
        try:
            decoded.append(mod.load(item)[1])
        except GraftError:
            continue
    if decoded:
        return decoded, f"{len(decoded)} {used} {mod.noun}s of the run's data"
    stand_ins, what = mod.export_fallback(run.meta)
    return stand_ins, (f"{len(stand_ins)} {what} (the run's validation {mod.noun}s are "
                       f"unavailable: {why})")


def _feeds_diff(want: tuple[torch.Tensor, ...], got: dict[str, np.ndarray],
                sig: ExportSignature) -> float:
    """Max |difference| between the eager model's inputs and the light preprocessor's feeds
    (inf where their shapes differ)."""
    diff = 0.0
    for spec, w in zip(sig.inputs, want):
        g, w = got[spec["name"]], w.numpy()
        if g.shape != w.shape:
            return float("inf")
        diff = max(diff, float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max()))
    return diff


def _parity(run: Any, bundle_dir: Path, bundle: dict[str, Any], sig: ExportSignature,
            exporter: Exporter) -> dict[str, Any]:
    """The bundle (its preprocessor and model file) against the eager model, on real inputs."""
    meta, model, mod = run.meta, run.model, run.modality
    inputs, source = _parity_inputs(run)
    pre, runner = light.preprocessor(bundle_dir, bundle), exporter.load(bundle_dir, bundle)
    view = mod.model_view(model)
    eager, got, pre_diff = [], [], 0.0
    # in chunks: bounded memory, and batch sizes (and text lengths) unlike the example's
    for start in range(0, len(inputs), PARITY_BATCH):
        chunk = inputs[start:start + PARITY_BATCH]
        batch = mod.batch(model, [view(x) for x in chunk])
        feeds = pre(chunk)
        with torch.no_grad():
            eager.append(model(batch).float())
        pre_diff = max(pre_diff, _feeds_diff(sig.feeds(batch), feeds, sig))
        got.append(torch.from_numpy(runner(feeds)).float())
    e, g = torch.cat(eager), torch.cat(got)
    info: dict[str, Any] = {"n": len(inputs), "inputs": source, "tolerance": PARITY_TOL,
                            "reference": "eager torch model (graftkit Run.model)",
                            "backend": exporter.backend()}
    if meta["task"] in ("classification", "multilabel"):
        cal = Calibration.from_meta(meta)
        pe, pg = cal.probs(e), cal.probs(g)
        diff = float((pe - pg).abs().max())
        same = cal.decide(pe.numpy()) == cal.decide(pg.numpy())
        agree = int((same.all(1) if same.ndim == 2 else same).sum())  # multilabel: all labels
        info.update(quantity="calibrated label probabilities" if meta["task"] == "multilabel"
                    else "calibrated class probabilities", labels_agree=agree)
    else:
        diff = float((e - g).abs().max())
        info.update(quantity="model output (standardised target)")
    return {**info, "max_abs_diff": diff, "passed": diff <= PARITY_TOL,
            "preprocessing_max_abs_diff": pre_diff, "preprocessing_compared": pre.compared}


def _size(n: int) -> str:
    for unit, div in (("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def cli_export(run_dir: str | Path, fmt: str, out: str | Path | None = None,
               overwrite: bool = False, opset: int | None = None) -> None:
    """``graft export``: write the bundle and print what was written and how it was checked.
    ``out`` defaults to a folder beside the run, ``<run dir>-<fmt>``."""
    run_path = Path(run_dir).expanduser()
    if out is None:
        out = run_path.resolve().with_name(f"{run_path.resolve().name}-{fmt}")
    b = export_run(run_path, fmt, out, overwrite=overwrite, opset=opset)
    p = b["parity"]
    print(f"exported {run_path} ({b['model']['name']}, {b['model']['strategy']}) as {fmt} "
          f"to {b['path']}")
    for name, f in b["files"].items():
        print(f"  {name:<22} {_size(f['bytes']):>9}  sha256 {f['sha256'][:16]}...")
    print(f"  {light.BUNDLE_JSON:<22} preprocessing, calibration, classes, versions, hashes")
    agree = f"; labels agree {p['labels_agree']}/{p['n']}" if "labels_agree" in p else ""
    d = "dp" if "labels_agree" in p else "dy"
    print(f"parity: max |{d}| = {p['max_abs_diff']:.2g} (tolerance {p['tolerance']:g}) on "
          f"{p['inputs']}, {p['backend']} vs eager torch{agree}")
    print(f"preprocessing without torch: max |dx| = {p['preprocessing_max_abs_diff']:.2g} "
          f"({p['preprocessing_compared']})")
    if fmt == "onnx":
        print(f"predict without torch: graftkit.export.light.BundlePredictor({b['path']!r})")
