"""Faithfulness of graft's explanations on a real run (issue: explainability).

Trains graft's default linear probe (pretrained efficientnet_lite0) on hymenoptera_256, or reuses
a run given with ``--run``, then explains the predicted class of every validation image with each
method and scores the heatmap with deletion/insertion (Petsiuk et al., RISE, BMVC 2018; see
graftkit.explain.faithfulness). Records, per method: the fraction of images whose deletion AUC
beats the random order (the issue's target: >= 80% for Grad-CAM), per class too, the mean AUCs
and the seconds per image (heatmap; faithfulness). For Grad-CAM it also scores against an i.i.d.
random pixel order, which any contiguous deletion loses to (see the faithfulness module).

An image whose fully deleted (mean-grey) version still gets P(target) > 0.5 cannot show a
deletion effect whatever the map; those are counted separately as "flat".

    cd benchmarks && ../.venv/bin/python explain_faithfulness.py [--run DIR] [--methods ...]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import DATA_DIR, write_result

METHODS = ["gradcam", "gradcam++", "occlusion"]
EXAMPLES = 3  # Grad-CAM overlays saved per class


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def frac(rs: list[dict[str, Any]], key: str = "beats_random") -> float | None:
        return float(np.mean([r[key] for r in rs])) if rs else None

    flat = [r for r in rows if r["p_all_deleted"] > 0.5]
    out: dict[str, Any] = {
        "n": len(rows), "beats_random": frac(rows),
        "beats_random_by_class": {c: frac([r for r in rows if r["label"] == c])
                                  for c in sorted({r["label"] for r in rows})},
        "n_flat": len(flat), "beats_random_not_flat": frac([r for r in rows if r not in flat]),
        "insertion_beats_random": float(np.mean([r["insertion_auc"] > r["insertion_auc_random"]
                                                 for r in rows])),
        "s_per_image_heatmap": float(np.mean([r["s_heatmap"] for r in rows])),
        "s_per_image_faithfulness": float(np.mean([r["s_faithfulness"] for r in rows])),
    }
    for key in ("deletion_auc", "deletion_auc_random", "insertion_auc", "insertion_auc_random"):
        out[f"mean_{key}"] = float(np.mean([r[key] for r in rows]))
    if "pixels" in rows[0]:
        out["vs_pixel_random"] = {
            "beats_random": frac([r["pixels"] for r in rows]),
            "mean_deletion_auc_random": float(np.mean([r["pixels"]["deletion_auc_random"]
                                                       for r in rows]))}
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
    args = ap.parse_args()
    examples = Path(args.examples)
    examples.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRAFT_CACHE_DIR"] = tmp
        t0 = time.perf_counter()
        run = Run(args.run) if args.run else graftkit.finetune(
            data=DATA_DIR / "hymenoptera_256", strategy="linear_probe", out=Path(tmp) / "probe",
            quiet=True)
        train_s = None if args.run else time.perf_counter() - t0
        model, cal, classes = run.model, Calibration.from_meta(run.meta), run.classes
        tf = eval_transform(model.data_config)
        val = DATA_DIR / "hymenoptera_256" / "val"
        files = [f for c in classes for f in sorted((val / c).glob("*.jpg"))[:args.limit]]
        rows: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
        correct, saved = 0, []
        for i, f in enumerate(files):
            image = load_image(f)
            x = tf(image)[None]
            with torch.inference_mode():
                probs = cal.probs(model(x.contiguous(memory_format=torch.channels_last)))[0]
            pred = int(cal.decide(probs[None].numpy())[0])
            correct += classes[pred] == f.parent.name
            for method in args.methods:
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
                    n_saved = sum(p.name.startswith(f.parent.name) for p in saved)
                    if n_saved < EXAMPLES:
                        png = examples / f"{f.parent.name}-{f.stem}.gradcam.png"
                        overlay(model_view(image, model.data_config), heat, classes[pred],
                                float(probs[pred]), method=method, target=classes[pred]).save(png)
                        saved.append(png)
                rows[method].append(row)
            if (i + 1) % 10 == 0 or i + 1 == len(files):
                print(f"{i + 1}/{len(files)}  " + "  ".join(
                    f"{m} {np.mean([r['beats_random'] for r in rs]):.2f}"
                    for m, rs in rows.items()), flush=True)
    summary = {m: summarise(rs) for m, rs in rows.items()}
    for m, s in summary.items():
        extra = (f"; vs i.i.d. pixel order {s['vs_pixel_random']['beats_random']:.1%}"
                 if "vs_pixel_random" in s else "")
        print(f"{m:<12} deletion beats random on {s['beats_random']:.1%} of {s['n']} "
              f"(by class {s['beats_random_by_class']}; {s['n_flat']} flat){extra}  deletion "
              f"{s['mean_deletion_auc']:.3f} vs {s['mean_deletion_auc_random']:.3f}  insertion "
              f"{s['mean_insertion_auc']:.3f} vs {s['mean_insertion_auc_random']:.3f}  "
              f"{s['s_per_image_heatmap']:.2f} + {s['s_per_image_faithfulness']:.2f} s/image")
    print("example overlays:", *map(str, saved), sep="\n  ")
    result = {"data": "hymenoptera_256", "split": "val", "strategy": "linear_probe",
              "model": run.meta["model"]["name"], "train_s": train_s,
              "val_accuracy": correct / len(files), "target": "gradcam beats_random >= 0.8",
              "faithfulness": {"steps": 20, "seed": 0, "deletion": "mean colour",
                               "insertion": "from blurred", "random": "7x7 random map"},
              "methods": summary, "examples": [str(p) for p in saved], "rows": rows}
    print(f"written to {write_result('explain_faithfulness', result)}")


if __name__ == "__main__":
    main()
