"""ONNX export of a real run: parity with the eager model, the torch-free predictor, latency.

Trains graft's default linear probe (pretrained efficientnet_lite0) on hymenoptera_256, exports
it with ``graft export --format onnx``, and measures on every validation image:
- max |dp| between the eager torch model and onnxruntime (calibrated probabilities, the same
  preprocessed inputs), and predicted-label agreement;
- max |dx| between graftkit's eval transform and the torch-free PIL + numpy preprocessing;
- label agreement and max |dp| of ``BundlePredictor.predict`` vs ``Run.predict`` (end to end);
- model latency per image at batch 1 and 16, eager torch vs onnxruntime, same thread count
  (median of repeated passes after a warm-up; the load average is recorded, as the machine may
  be shared), and end-to-end predict time per image.

    cd benchmarks && ../.venv/bin/python export_parity.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _common import DATA_DIR, write_result


def per_image_ms(fn: Callable[[np.ndarray], object], x: np.ndarray, batch: int,
                 repeats: int) -> float:
    """Median over ``repeats`` passes of the time per image to run ``x`` in batches."""
    batches = [x[i:i + batch] for i in range(0, len(x) - batch + 1, batch)]
    for b in batches[:3]:
        fn(b)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        times.append((time.perf_counter() - t0) / (len(batches) * batch))
    return 1000 * statistics.median(times)


def main() -> None:
    import graftkit
    from graftkit.data.images import load_image
    from graftkit.data.transforms import eval_transform
    from graftkit.evaluate.calibration import Calibration
    from graftkit.export import BundlePredictor, export_run
    from graftkit.export.light import preprocess
    from graftkit.inference import run_split

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["GRAFT_CACHE_DIR"] = tmp
        t0 = time.perf_counter()
        run = graftkit.finetune(data=DATA_DIR / "hymenoptera_256", strategy="linear_probe",
                                out=Path(tmp) / "run", quiet=True)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        bundle = export_run(run.path, "onnx", Path(tmp) / "bundle")
        export_s = time.perf_counter() - t0

        items, _, _ = run_split(run, "val")
        paths = [p for p, _ in items]
        images = [load_image(p) for p in paths]
        tf, pre = eval_transform(run.model.data_config), run.meta["preprocessing"]
        x = torch.stack([tf(img) for img in images])
        pre_diff = max(float(np.abs(preprocess(img, pre) - xi.numpy()).max())
                       for img, xi in zip(images, x))

        model, threads = run.model, torch.get_num_threads()
        predictor = BundlePredictor(Path(tmp) / "bundle", threads=threads)

        @torch.inference_mode()
        def eager(b: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(b).contiguous(memory_format=torch.channels_last)
            return model(t).float().numpy()

        def onnx(b: np.ndarray) -> np.ndarray:
            return predictor.logits({"image": b})

        xn = x.numpy()
        cal = Calibration.from_meta(run.meta)
        le = np.concatenate([eager(xn[i:i + 16]) for i in range(0, len(xn), 16)])
        lo = np.concatenate([onnx(xn[i:i + 16]) for i in range(0, len(xn), 16)])
        pe, po = cal.probs(torch.from_numpy(le)), cal.probs(torch.from_numpy(lo))
        max_dp = float((pe - po).abs().max())
        model_agree = int((cal.decide(pe.numpy()) == cal.decide(po.numpy())).sum())

        t0 = time.perf_counter()
        want = run.predict(paths, topk=2)
        run_predict_ms = 1000 * (time.perf_counter() - t0) / len(paths)
        t0 = time.perf_counter()
        got = predictor.predict(paths, topk=2)
        light_predict_ms = 1000 * (time.perf_counter() - t0) / len(paths)
        agree = sum(g["label"] == w["label"] for g, w in zip(got, want))
        e2e_dp = max(abs(g["prob"] - w["prob"]) for g, w in zip(got, want))

        load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
        latency = {f"batch_{b}": {"eager_torch_ms": per_image_ms(eager, xn, b, r),
                                  "onnxruntime_ms": per_image_ms(onnx, xn, b, r)}
                   for b, r in ((1, 3), (16, 5))}
        load_1m = [load_before, os.getloadavg()[0]]
        result = {
            "data": "hymenoptera_256", "model": run.meta["model"]["name"],
            "strategy": run.meta["strategy"], "n_val": len(paths),
            "temperature": cal.temperature, "opset": bundle["opset"],
            "exporter": bundle["exporter"], "model_bytes": bundle["files"]["model.onnx"]["bytes"],
            "export_parity_check": bundle["parity"],
            "max_abs_dp_eager_vs_onnxruntime": max_dp, "model_labels_agree": model_agree,
            "preprocessing_max_abs_dx": pre_diff,
            "bundle_predictor_vs_run_predict": {"labels_agree": agree, "n": len(paths),
                                                "max_abs_dp": e2e_dp},
            "latency_per_image": {**latency, "threads": threads, "load_average_1m": load_1m,
                                  "predict_end_to_end_ms": {"Run.predict": run_predict_ms,
                                                            "BundlePredictor": light_predict_ms}},
            "train_s": train_s, "export_s": export_s,
        }
    print(f"{result['n_val']} val images: max |dp| eager vs onnxruntime {max_dp:.2g} (labels "
          f"agree {model_agree}/{len(paths)}); preprocessing max |dx| {pre_diff:.2g}; "
          f"BundlePredictor vs Run.predict labels agree {agree}/{len(paths)}, max |dp| "
          f"{e2e_dp:.2g}; export {export_s:.1f} s")
    for b, v in latency.items():
        print(f"  {b}: eager torch {v['eager_torch_ms']:.2f} ms/image, onnxruntime "
              f"{v['onnxruntime_ms']:.2f} ms/image ({threads} threads, load average "
              f"{load_1m[0]:.1f} -> {load_1m[1]:.1f})")
    print(f"  predict end to end: Run.predict {run_predict_ms:.2f} ms/image, BundlePredictor "
          f"{light_predict_ms:.2f} ms/image")
    print(f"written to {write_result('export_parity', result)}")


if __name__ == "__main__":
    main()
