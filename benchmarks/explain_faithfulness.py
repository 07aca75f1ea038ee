"""Faithfulness of graft's explanations on a real run (issue: explainability).

Trains graft's default linear probe (pretrained efficientnet_lite0) on hymenoptera_256, or reuses
a run given with ``--run``, then explains the predicted class of every validation image with each
method and scores the heatmap with deletion/insertion (Petsiuk et al., RISE, BMVC 2018; see
graftkit.explain.faithfulness). Records, per method: the fraction of images whose deletion AUC
beats the random order (the issue's target: >= 80% for Grad-CAM), per class too, the mean AUCs
and the seconds per image (heatmap; faithfulness). For Grad-CAM it also scores against an i.i.d.
random pixel order, which any contiguous deletion loses to (see the faithfulness module).

Where P(target) stays high until most of the image is grey (this probe's ants), every order
scores about the same; ``near_ties`` counts the images whose two deletion AUCs differ by < 0.02.

    cd benchmarks && ../.venv/bin/python explain_faithfulness.py [--run DIR] [--methods ...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import DATA_DIR, write_result

METHODS = ["gradcam", "gradcam++", "occlusion"]
RESULT = Path(__file__).resolve().parent / "results" / "explain_faithfulness.json"
EXAMPLES = 3  # Grad-CAM overlays saved per class


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(rs: list[dict[str, Any]], key: str) -> float:
        return float(np.mean([r[key] for r in rs]))

    by_class = {c: [r for r in rows if r["label"] == c] for c in sorted({r["label"] for r in rows})}
    out: dict[str, Any] = {
        "n": len(rows), "beats_random": mean(rows, "beats_random"),
        "beats_random_by_class": {c: mean(rs, "beats_random") for c, rs in by_class.items()},
        "near_ties": float(np.mean([abs(r["deletion_auc"] - r["deletion_auc_random"]) < 0.02
                                    for r in rows])),
        "insertion_beats_random": float(np.mean([r["insertion_auc"] > r["insertion_auc_random"]
                                                 for r in rows])),
        "s_per_image_heatmap": mean(rows, "s_heatmap"),
        "s_per_image_faithfulness": mean(rows, "s_faithfulness"),
    }
    for key in ("deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random"):
        out[f"mean_{key}"] = mean(rows, key)
        out[f"mean_{key}_by_class"] = {c: mean(rs, key) for c, rs in by_class.items()}
    if "pixels" in rows[0]:
        pixels = [r["pixels"] for r in rows]
        out["vs_pixel_random"] = {"beats_random": mean(pixels, "beats_random"),
                                  "mean_deletion_auc_random": mean(pixels, "deletion_auc_random")}
    return out


def main() -> None:
    import graftkit
    from graftkit.api import Run
    from graftkit.data.images import load_image
    from graftkit.data.transforms import eval_transform
    from graftkit.evaluate.calibration import Calibration
    from graftkit.explain import explain, faithfulness, model_view, overlay

    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=None, help="reuse this run directory instead of training")
    ap.add_argument("--methods", nargs="*", default=METHODS)
    ap.add_argument("--examples", default=str(Path(tempfile.gettempdir()) / "graftkit-explain"),
                    help="folder for example overlays")
    ap.add_argument("--limit", type=int, default=None, help="first N images per class (a quick "
                    "look; the recorded figures use all)")
    ap.add_argument("--resume", action="store_true", help="keep the rows of the results file "
                    "(same --run) and compute only what is missing: a killed run, a new method")
    args = ap.parse_args()
    examples = Path(args.examples)
    examples.mkdir(parents=True, exist_ok=True)
    old = json.loads(RESULT.read_text()) if args.resume else {}
    rows: dict[str, list[dict[str, Any]]] = old.get("rows", {})
    saved = [Path(p) for p in old.get("examples", [])]
    for m in args.methods:
        rows.setdefault(m, [])
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRAFT_CACHE_DIR"] = tmp
        t0 = time.perf_counter()
        run = Run(args.run) if args.run else graftkit.finetune(
            data=DATA_DIR / "hymenoptera_256", strategy="linear_probe", out=Path(tmp) / "probe",
            quiet=True)
        train_s = old.get("train_s") if args.run else time.perf_counter() - t0
        model, cal, classes = run.model, Calibration.from_meta(run.meta), run.classes
        tf = eval_transform(model.data_config)
        val = DATA_DIR / "hymenoptera_256" / "val"
        files = [f for c in classes for f in sorted((val / c).glob("*.jpg"))[:args.limit]]
        for i, f in enumerate(files):
            todo = [m for m, rs in rows.items() if f.name not in {r["image"] for r in rs}]
            if not todo:
                continue
            image = load_image(f)
            x = tf(image)[None]
            with torch.inference_mode():
                probs = cal.probs(model(x.contiguous(memory_format=torch.channels_last)))[0]
            pred = int(cal.decide(probs[None].numpy())[0])
            for method in todo:
                t1 = time.perf_counter()
                heat = explain(model, x, pred, method)
                t2 = time.perf_counter()
                s = faithfulness(model, x, heat, pred)
                t3 = time.perf_counter()
                row = {"image": f.name, "label": f.parent.name, "predicted": classes[pred],
                       "p_all_deleted": s["deletion_curve"][-1], "s_heatmap": t2 - t1,
                       "s_faithfulness": t3 - t2, **{k: s[k] for k in (
                           "deletion_auc", "deletion_auc_random", "insertion_auc",
                           "insertion_auc_random", "beats_random")}}
                if method == "gradcam":
                    pix = faithfulness(model, x, heat, pred, random_grid=None)
                    row["pixels"] = {k: pix[k] for k in ("deletion_auc_random", "beats_random")}
                    if sum(p.name.startswith(f.parent.name) for p in saved) < EXAMPLES:
                        png = examples / f"{f.parent.name}-{f.stem}.gradcam.png"
                        overlay(model_view(image, model.data_config), heat, classes[pred],
                                float(probs[pred]), method=method, target=classes[pred]).save(png)
                        saved.append(png)
                rows[method].append(row)
            if (i + 1) % 10 == 0 or i + 1 == len(files):
                print(f"{i + 1}/{len(files)}  " + "  ".join(
                    f"{m} {np.mean([r['beats_random'] for r in rs]):.2f}"
                    for m, rs in rows.items()), flush=True)
                # Partial results survive a killed run (this takes an hour on 2 cores).
                record(run, train_s, len(files), rows, saved)
    path = record(run, train_s, len(files), rows, saved)
    for m, s in {m: summarise(rs) for m, rs in rows.items()}.items():
        extra = (f"; vs i.i.d. pixel order {s['vs_pixel_random']['beats_random']:.1%}"
                 if "vs_pixel_random" in s else "")
        by_class = ", ".join(f"{c} {v:.1%}" for c, v in s["beats_random_by_class"].items())
        print(f"{m:<12} deletion beats random on {s['beats_random']:.1%} of {s['n']} "
              f"({by_class}; near ties {s['near_ties']:.1%}){extra}  deletion "
              f"{s['mean_deletion_auc']:.3f} vs {s['mean_deletion_auc_random']:.3f}  insertion "
              f"{s['mean_insertion_auc']:.3f} vs {s['mean_insertion_auc_random']:.3f}  "
              f"{s['s_per_image_heatmap']:.2f} + {s['s_per_image_faithfulness']:.2f} s/image")
    print("example overlays:", *map(str, saved), sep="\n  ")
    print(f"written to {path}")


def record(run: Any, train_s: float | None, total: int, rows: dict[str, list[dict[str, Any]]],
           saved: list[Path]) -> Path:
    first = next(iter(rows.values()))
    return write_result("explain_faithfulness", {
        "data": "hymenoptera_256", "split": "val", "strategy": "linear_probe",
        "model": run.meta["model"]["name"], "train_s": train_s, "images": total,
        "val_accuracy": float(np.mean([r["predicted"] == r["label"] for r in first])),
        "target": "gradcam beats_random >= 0.8",
        "faithfulness": {"steps": 20, "seed": 0, "deletion": "mean colour",
                         "insertion": "from blurred", "random": "7x7 random map"},
        "methods": {m: summarise(rs) for m, rs in rows.items() if rs},
        "examples": [str(p) for p in saved], "rows": rows})


if __name__ == "__main__":
    main()
