"""``graft explain``: a finished run's decisions, explained with the methods its modality
supports (images: Grad-CAM and friends, overlays; texts: integrated gradients, HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import run as rd
from ..errors import ConfigError, GraftError
from ..inference import LoadedRun
from ..modalities import MODALITIES


def classification_run(run: Any) -> LoadedRun:
    """The run (a :class:`LoadedRun` or its directory), if it is a classification run (or a
    multi-label image run: each label is a target, the most probable one by default)."""
    run = run if isinstance(run, LoadedRun) else LoadedRun(run)
    if run.meta["task"] == "multilabel" and not run.modality.explains_labels:
        raise GraftError(f"explain takes multi-label image runs; {str(run.path)!r} is a "
                         f"multi-label {run.modality.noun} run (not yet)")
    if run.meta["task"] not in ("classification", "multilabel"):
        raise GraftError(f"explain is for classification runs; {str(run.path)!r} is "
                         f"{run.meta['task']}")
    return run


def explain_run(run_dir: str | Path | LoadedRun, inputs: list[str | Path],
                method: str | None = None, target: str | None = None, *, out_dir: str | Path,
                topk: int = 3, texts: list[str] | None = None) -> list[dict[str, Any]]:
    """Explain a run's decision on each input and write the explanations into ``out_dir``.

    An image run explains image files or folders of images (see
    :func:`graftkit.explain.images.explain_images`: an overlay and a JSON record each, default
    method ``gradcam``); a text run explains ``texts`` and the texts in ``inputs`` (.txt/.csv
    files) with integrated gradients (:func:`graftkit.explain.text_run.explain_text_run`).
    Returns the records written.
    """
    known = sorted({m for n in MODALITIES.names() for m in MODALITIES.get(n).explain_methods()})
    if method is not None and method not in known:  # before the model loads
        raise ConfigError(f"unknown explanation method {method!r}; choose one of: "
                          f"{', '.join(known)}")
    run = classification_run(run_dir)
    return run.modality.explain(run, list(inputs), list(texts or []), method, target,
                                Path(out_dir), topk)


def cli_explain(run_dir: str | Path, inputs: list[str | Path], method: str | None = None,
                target: str | None = None, out: str | Path | None = None, topk: int = 3,
                texts: list[str] | None = None) -> None:
    """``graft explain``: explain each input and print one line per image or text. ``out``
    defaults to ``explain/<run folder name>`` under the current folder."""
    out_dir = Path(out) if out else Path("explain") / Path(run_dir).expanduser().resolve().name
    run = classification_run(run_dir)
    if out is None:  # the default folder is graft's own: explaining again replaces its files
        rd.adopt_outputs(out_dir)
    records = explain_run(run, inputs, method, target, out_dir=out_dir, topk=topk, texts=texts)
    for r in records:
        f = r["faithfulness"]
        verdict = "better than" if f["beats_random"] else "NOT better than"
        print(f"{r.get('overlay') or r['html']}  predicted: {r['predicted']} ({r['prob']:.2f})  "
              f"{r['method']} of {r['target']}: deletion AUC {f['deletion_auc']:.3f} vs random "
              f"{f['deletion_auc_random']:.3f} ({verdict} random)")
    if records and "html" in records[0]:
        print(f"{len(records)} text(s) explained; HTML and JSON in {out_dir} (all: "
              f"{out_dir / 'index.html'})")
    else:
        print(f"{len(records)} {run.modality.noun}(s) explained; overlays and JSON in {out_dir}")
