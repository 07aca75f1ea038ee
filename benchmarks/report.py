"""Print the README's result tables (Markdown) from benchmarks/results/*.json.

    python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def machine_line(r: dict) -> str:
    m = r["machine"]
    gpu = f", {m['cuda']}" if m.get("cuda") else ""
    return (f"{m['cpu']} ({m['cpu_count']} cores, {m['torch_threads']} torch threads{gpu}); "
            f"torch {m['torch']}, timm {m['timm']}, Python {m['python']}; {m['date']}")


def main() -> None:
    acc = load("accuracy")
    if acc:
        print("| data | strategy | val accuracy (selected checkpoint) | last epoch | best epoch "
              "| time |")
        print("|---|---|---|---|---|---|")
        for r in acc["rows"]:
            print(f"| {r['data']} | {r['strategy']} | {r['val_accuracy']:.4f} | "
                  f"{r['val_accuracy_last_epoch']:.4f} | {r['best_epoch']}/{r['epochs']} | "
                  f"{r['seconds']:.0f} s |")
        print(f"\n`benchmarks/accuracy.py` on {machine_line(acc)}.\n")
    cal = load("calibration")
    if cal:
        print("| data | strategy | T (NLL optimum) | accuracy before → after | val ECE before → "
              "after | held-out ECE (2-fold) | report sections missing |")
        print("|---|---|---|---|---|---|---|")
        for r in cal["rows"]:
            cf = r["cross_fit"]
            print(f"| {r['data']} | {r['strategy']} | {r['temperature']:.3f} "
                  f"({r['temperature_nll']:.3f}) | {r['accuracy_before']:.4f} → "
                  f"{r['accuracy_after']:.4f} | {r['ece_before']:.4f} → {r['ece_after']:.4f} | "
                  f"{cf['ece_before']:.4f} → {cf['ece_after']:.4f} | "
                  f"{', '.join(r['sections_missing']) or 'none'} |")
        print(f"\n`benchmarks/calibration.py` on {machine_line(cal)}.\n")
    text = load("text_accuracy")
    if text:
        print("| data | strategy | recipe | test accuracy | test macro-F1 | val accuracy | best "
              "epoch | trained params | train time (wall) |")
        print("|---|---|---|---|---|---|---|---|---|")
        order = {"linear_probe": 0, "lora": 1, "full": 2}
        for r in sorted(text["rows"], key=lambda r: (r["data"], order.get(r["strategy"], 9),
                                                     len(r["overrides"]))):
            stages = ", ".join(f"{s['epochs']} ep lr {s['lr']:g}" for s in r["stages"])
            over = {k: v for k, v in r["overrides"].items() if k != "train.threads"}
            recipe = ("default" if not over else ", ".join(f"`{k}={v}`" for k, v in
                                                           over.items())) + f" ({stages})"
            print(f"| {r['data']} | {r['strategy']} | {recipe} | {r['test_accuracy']:.4f} | "
                  f"{r['test_macro_f1']:.4f} | {r['val_accuracy']:.4f} | "
                  f"{r['best_epoch']}/{r['epochs_run']} | {r['trainable_params']:,} "
                  f"({100 * r['trainable_fraction']:.3g}%) | {r['train_s']:.0f} s "
                  f"({r['wall_s']:.0f} s) |")
        print(f"\n`benchmarks/text_accuracy.py` on {machine_line(text)}.\n")
    rob = load("robustness")
    if rob:
        sevs = sorted({int(k) for r in rob["rows"] for k in r["per_severity"]})
        by_sev = len(sevs) > 1
        print("| data | method | clean accuracy | mCA | relative robustness | Δ mCA vs full | "
              "Δ clean vs full |" + (f" mean accuracy at severity {', '.join(map(str, sevs))} |"
                                     if by_sev else "") + " scored images | train time |")
        print("|---|---|---|---|---|---|---|" + ("---|" if by_sev else "") + "---|---|")
        for r in rob["rows"]:
            sev = (" / ".join(f"{r['per_severity'].get(str(k), float('nan')):.3f}"
                              for k in sevs) + " | ") if by_sev else ""
            alpha = f" (α = {r['wise_ft_alpha']:g})" if r.get("wise_ft_alpha") is not None \
                else ""
            deltas = "— | —" if r["method"] == "full" else (
                f"{100 * r['d_mca_vs_full']:+.1f} pt | {100 * r['d_clean_vs_full']:+.1f} pt")
            print(f"| {r['data']} | {r['method']}{alpha} | {r['clean_accuracy']:.4f} | "
                  f"{r['mca']:.4f} | {r['relative_robustness']:.3f} | {deltas} | {sev}"
                  f"{r['n']} | {r['train_s']:.0f} s |")
        for data, d in rob["done_means"].items():
            passing = [m for m, c in d["methods"].items() if c["passes"]]
            print(f"\n{data}: done means ({d['criterion']}) "
                  f"{'met by ' + ', '.join(passing) if passing else 'not met'}.", end="")
        s = rob["rows"][0]["settings"]
        print(f"\n\n`benchmarks/robustness.py`: {len(s['corruptions'])} corruptions x "
              f"severit{'y' if len(s['severities']) == 1 else 'ies'} "
              f"{', '.join(map(str, s['severities']))}, corruption seed {s['seed']}, on "
              f"{machine_line(rob)}.\n")
    cache = load("linear_probe_cache")
    over = load("train_overhead")
    gpu = load("gpu_precision")
    print("| benchmark | measured side by side | result |")
    print("|---|---|---|")
    if cache:
        for r in cache["rows"]:
            print(f"| `linear_probe_cache` ({r['epochs']} epochs), caching alone | graft cached "
                  f"{r['cached_s']:.1f} s vs graft recomputing every epoch {r['recompute_s']:.1f}"
                  f" s | **{r['speedup']:.1f}x** |")
            if "plain_s" in r:
                print(f"| `linear_probe_cache` ({r['epochs']} epochs), vs your own loop | graft "
                      f"cached {r['cached_s']:.1f} s vs a plain PyTorch loop {r['plain_s']:.1f} s "
                      f"| **{r['speedup_vs_plain']:.1f}x** |")
    if over:
        print(f"| `train_overhead` | graft `train_epoch` {over['graft_img_s']:.1f} img/s vs "
              f"hand-written loop {over['hand_img_s']:.1f} img/s (same layout) | "
              f"**{over['ratio']:.2f}x** |")
        print(f"| `train_overhead` (graft default) | channels_last "
              f"{over['graft_channels_last_img_s']:.1f} img/s vs hand-written loop "
              f"{over['hand_img_s']:.1f} img/s | **{over['ratio_default']:.2f}x** |")
    if gpu:
        print(f"| `gpu_precision` | bf16 + channels_last {gpu['bf16_channels_last']['img_s']:.0f}"
              f" img/s vs fp32 {gpu['fp32']['img_s']:.0f} img/s (losses "
              f"{gpu['bf16_channels_last']['loss']:.4f} / {gpu['fp32']['loss']:.4f}) | "
              f"**{gpu['speedup']:.2f}x** |")
    exp = load("export_parity")
    if exp:
        lat = exp["latency_per_image"]
        print(f"| `export_parity` | onnxruntime {lat['batch_1']['onnxruntime_ms']:.0f} ms vs eager "
              f"torch {lat['batch_1']['eager_torch_ms']:.0f} ms per image (batch 1, load "
              f"average 7-8); max abs Δp "
              f"{exp['max_abs_dp_eager_vs_onnxruntime']:.1e}, labels agree "
              f"{exp['model_labels_agree']}/{exp['n_val']} | **"
              f"{lat['batch_1']['eager_torch_ms'] / lat['batch_1']['onnxruntime_ms']:.1f}x** |")
    speed = load("corruption_speed")
    if speed:
        print(f"| `corruption_speed` | {speed['images']} images x {speed['corruptions']} "
              f"corruptions x {len(speed['severities'])} severities, {speed['workers']} worker "
              f"processes: {speed['total_s']:.0f} s wall, {speed['cpu_s']:.0f} s CPU (load "
              f"average {speed['load_average_before']:.1f} before) | **{speed['images_per_s']} "
              f"img/s** |")
    for name, r in (("CPU", cache or over), ("GPU", gpu)):
        if r:
            print(f"\n{name}: {machine_line(r)}.", end="")
    print()


def model_auto() -> None:
    """--model auto against the default probe (benchmarks/model_auto.py)."""
    r = load("model_auto")
    if not r:
        return
    for name, label in (("hymenoptera", "hymenoptera_256"), ("caltech", "caltech101_10_160")):
        s = r["sets"].get(name)
        if not s:
            continue
        a, d = s["auto"], s["default"]
        print(f"{label}: `--model auto` chose **{a['model']}**, val accuracy "
              f"**{a['val_accuracy']:.4f}** after training (default efficientnet_lite0 probe: "
              f"{d['val_accuracy']:.4f}; val has {a['val_n']} images); whole run "
              f"{a['wall_s']:.0f} s against {d['wall_s']:.0f} s, so auto adds "
              f"{s['auto_adds_s']:.0f} s (selection {s['selection_s']:.0f} s; load average "
              f"{a['load_avg_1m_before']} / {d['load_avg_1m_before']} before).\n")
        print("| backbone(s) | cv accuracy (train, 5-fold) | val accuracy (same regression) "
              "| time |")
        print("|---|---|---|---|")
        for c in s["ranking"]:
            v = "not read" if c["val_accuracy"] is None else f"{c['val_accuracy']:.4f}"
            b = "**" if c["name"] == a["model"] else ""
            print(f"| {b}{c['name']}{b} | {c['cv_accuracy']:.4f} | {v} | {c['seconds']:.1f} s |")
        print()
        seeds = s.get("seeds")
        if seeds:
            spread = "; ".join(
                f"{m} {min(v):.4f}-{max(v):.4f} (mean {sum(v) / len(v):.4f})"
                for m, v in ((d["model"], seeds["default"]), (a["model"], seeds["auto"])))
            print(f"Val accuracy over training seeds 0-{len(seeds['auto']) - 1} (the head's "
                  f"initialisation and batch order; the features are the same): {spread}.\n")
    print(f"`benchmarks/model_auto.py` on {machine_line(r)}.\n")


def text_models() -> None:
    """The built-in text encoders side by side (benchmarks/text_models.py)."""
    r = load("text_models")
    if not r:
        return
    print("| data | encoder | test accuracy | test macro-F1 | val accuracy | val macro-F1 | "
          "features | wall | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for x in r["rows"]:
        t = x["timings"] or {}
        print(f"| {x['set']} | {x['model']} | {x['test']['accuracy']:.4f} | "
              f"{x['test']['macro_f1']:.4f} | {x['val']['accuracy']:.4f} | "
              f"{x['val']['macro_f1']:.4f} | {t.get('features', 0):.0f} s | {x['wall_s']:.0f} s "
              f"| {x['load_avg_1m_before']} |")
    print(f"\n`benchmarks/text_models.py` on {machine_line(r)}.\n")


def multilabel() -> None:
    """Multi-label runs on tiled caltech photos and TREC coarse+fine (benchmarks/multilabel.py)."""
    r = load("multilabel")
    if not r:
        return
    print("| data | model | loss | labels | val macro-F1 (at 0.5) | test macro-F1 (at 0.5) | "
          "test micro-F1 | test mAP | test subset acc. | test ECE before -> after | wall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for x in r["rows"]:
        v, t = x["val"], x["test"]
        print(f"| {x['set']} | {x['model']} | {x['loss']} | {x['labels']} | "
              f"{v['macro_f1']:.4f} ({v['at_0.5']['macro_f1']:.4f}) | "
              f"{t['macro_f1']:.4f} ({t['at_0.5']['macro_f1']:.4f}) | {t['micro_f1']:.4f} | "
              f"{t['mAP']:.4f} | {t['subset_accuracy']:.4f} | {t['at_0.5']['ece']:.4f} -> "
              f"{t['ece']:.4f} | {x['wall_s']:.0f} s |")
    print(f"\n`benchmarks/multilabel.py` on {machine_line(r)}.\n")


if __name__ == "__main__":
    main()
    model_auto()
    text_models()
    multilabel()
