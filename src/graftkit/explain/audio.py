"""Explaining an audio model's decisions: occlusion over time x frequency of the log-mel input.

Each cell of a grid over the spectrogram (``MEL_CELL`` mel bands x ``FRAME_CELL`` frames) is set
to the spectrogram's floor (silence, the value Whisper's normalisation gives to no energy), one
at a time; a cell's attribution is how much the explained class's log-probability drops. The map is
drawn over the spectrogram. The sanity check is the image path's (explain/faithfulness.py, after
RISE): delete the most-attributed cells first and record the probability (deletion AUC, low is
good), restore them first from silence (insertion AUC, high is good), each against a random cell
order with the same seed; ``beats_random`` says whether deletion beat the random order.

Waveform encoders (wav2vec2) have no spectrogram input to occlude: they are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import run as rd
from ..data.audio import BadAudio, load_audio
from ..errors import ConfigError, DataError, GraftError

MEL_CELL, FRAME_CELL = 8, 10  # occlusion cell: 8 mel bands x 10 frames (100 ms)
BATCH = 64
STEPS = 20


def _cells(shape: tuple[int, int]) -> list[tuple[slice, slice]]:
    n_mels, frames = shape
    return [(slice(m, m + MEL_CELL), slice(t, t + FRAME_CELL))
            for m in range(0, n_mels, MEL_CELL) for t in range(0, frames, FRAME_CELL)]


@torch.inference_mode()
def _probs(model: Any, cal: Any, specs: torch.Tensor, length: torch.Tensor, target: int
           ) -> np.ndarray:
    out = []
    for b in specs.split(BATCH):
        x = {"input": b, "length": length.expand(len(b))}
        out.append(cal.probs(model(x).float())[:, target])
    return torch.cat(out).numpy()


def _masked(spec: torch.Tensor, cells: list[tuple[slice, slice]], orders: np.ndarray,
            fill: float, start_from_fill: bool) -> torch.Tensor:
    """For each prefix of each order, ``spec`` with those cells filled (or, from a filled
    spectrogram, those cells restored)."""
    views = []
    for order in orders:
        cur = torch.full_like(spec, fill) if start_from_fill else spec.clone()
        views.append(cur.clone())
        per_step = np.array_split(order, STEPS)
        for chunk in per_step:
            for i in chunk:
                m, t = cells[i]
                cur[m, t] = spec[m, t] if start_from_fill else fill
            views.append(cur.clone())
    return torch.stack(views)


def _auc(curve: np.ndarray) -> float:
    return float((curve.sum() - (curve[0] + curve[-1]) / 2) / (len(curve) - 1))


def occlusion(model: Any, cal: Any, x: dict[str, torch.Tensor], target: int, seed: int = 0
              ) -> tuple[np.ndarray, dict[str, Any]]:
    """(attribution map (n_mels, frames), faithfulness record) of class ``target`` for one
    clip's model input ``x`` ({"input": (n_mels, frames), "length": ()})."""
    spec, length = x["input"], x["length"].reshape(1)
    fill = float(spec.min())
    cells = _cells(tuple(spec.shape))
    base = _probs(model, cal, spec[None], length, target)[0]
    occluded = torch.stack([spec.clone() for _ in cells])
    for k, (m, t) in enumerate(cells):
        occluded[k, m, t] = fill
    # the drop in log-probability: a confident model's probability barely moves, its log does
    drops = np.log(max(base, 1e-12)) - np.log(np.maximum(
        _probs(model, cal, occluded, length, target), 1e-12))
    heat = np.zeros(tuple(spec.shape), dtype=np.float32)
    for k, (m, t) in enumerate(cells):
        heat[m, t] = drops[k]
    rng = np.random.default_rng(seed)
    ranked = np.lexsort((rng.random(len(cells)), -drops))
    orders = np.stack([ranked, rng.permutation(len(cells))])
    curves = {}
    for kind, from_fill in (("deletion", False), ("insertion", True)):
        p = _probs(model, cal, _masked(spec, cells, orders, fill, from_fill), length, target)
        curves[kind], curves[kind + "_random"] = p.reshape(2, STEPS + 1)
    record = {"deletion_auc": _auc(curves["deletion"]),
              "deletion_auc_random": _auc(curves["deletion_random"]),
              "insertion_auc": _auc(curves["insertion"]),
              "insertion_auc_random": _auc(curves["insertion_random"]),
              "steps": STEPS, "random": "cell order",
              "deletion_curve": [round(float(v), 4) for v in curves["deletion"]],
              "insertion_curve": [round(float(v), 4) for v in curves["insertion"]]}
    record["beats_random"] = record["deletion_auc"] < record["deletion_auc_random"]
    return heat, record


def _draw(spec: np.ndarray, heat: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 2.6), dpi=100)
    axes[0].imshow(spec, origin="lower", aspect="auto", cmap="magma")
    axes[0].set_title("log-mel input", fontsize=9)
    axes[1].imshow(spec, origin="lower", aspect="auto", cmap="gray")
    lim = float(np.abs(heat).max()) or 1.0
    axes[1].imshow(heat, origin="lower", aspect="auto", cmap="RdBu_r", alpha=0.6,
                   vmin=-lim, vmax=lim)
    axes[1].set_title(title, fontsize=9)
    for ax in axes:
        ax.set_xlabel("frame (10 ms)", fontsize=8)
        ax.set_ylabel("mel band", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def explain_clips(run: Any, files: list[str], target: str | None, out_dir: Path,
                  topk: int = 3) -> list[dict[str, Any]]:
    """For each sound file, ``<out_dir>/<stem>.occlusion.png`` (the spectrogram and the map over
    it) and ``<stem>.json`` (top-k classes, the explained class, the deletion/insertion scores),
    as :func:`graftkit.explain.images.explain_images` writes for images. Every input is checked
    before anything is written."""
    model, cal, classes = run.model, run.calibration, run.classes
    if model.data_config.frontend != "log_mel":
        raise GraftError("occlusion needs a spectrogram input; this audio model takes waveforms")
    if target is not None and target not in classes:
        raise ConfigError(f"unknown class {target!r}; this run's classes: {', '.join(classes)}")
    waves = []
    for f in files:
        try:
            waves.append(load_audio(f))
        except BadAudio as e:
            raise DataError(e.reason) from None
    out, stems = Path(out_dir), rd.unique_stems([Path(f) for f in files])
    rd.claim_outputs(out, [n for st in stems for n in (f"{st}.occlusion.png", f"{st}.json")])
    records = []
    model.eval()
    for f, wave, stem in zip(files, waves, stems):
        x = model.prepare(wave)
        with torch.inference_mode():
            probs = cal.probs(model({k: v[None] for k, v in x.items()}).float())[0]
        predicted = int(cal.decide(probs[None].numpy())[0])
        t = predicted if target is None else classes.index(target)
        heat, faith = occlusion(model, cal, x, t)
        png = out / f"{stem}.occlusion.png"
        _draw(x["input"].numpy(), heat, f"occlusion: {classes[t]} "
              f"(predicted {classes[predicted]} {float(probs[predicted]):.2f})", png)
        p, idx = probs.topk(min(topk, len(classes)))
        record = {"input": str(f), "method": "occlusion", "predicted": classes[predicted],
                  "prob": float(probs[predicted]), "target": classes[t],
                  "target_prob": float(probs[t]),
                  "top": [{"label": classes[int(i)], "prob": float(v)} for v, i in zip(p, idx)],
                  "faithfulness": faith, "overlay": str(png)}
        rd.write_json(out / f"{stem}.json", record)
        records.append(record)
    return records
