"""graft export: bundles in every format, their checks, and the torch-free ONNX predictor.

One tiny image run (timm's test_efficientnet, random init, 64 px, one linear-probe epoch on
generated images) is trained once for the module; the ONNX bundle is exported once and shared.
So is one tiny text run (the built-in paraphrase-MiniLM-L3-v2, one linear-probe epoch on 40 real
sms_spam messages) and its ONNX bundle.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from graftkit import modalities
from graftkit.errors import GraftError
from graftkit.export import EXPORTERS, BundlePredictor, cli_export, export_run
from graftkit.export.formats import rebuild_from_bundle
from graftkit.export.light import PREPROCESSORS, BadInput, preprocess, sha256
from tests.conftest import shared_dataset

N_VAL = 8  # validation images of the tiny run (4 per class); validation texts of the text run


def _images(root: Path, split: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for cls, colour in (("blue", (40, 60, 200)), ("red", (200, 50, 40))):
        (root / split / cls).mkdir(parents=True)
        for i in range(n):
            h, w = 70 + 9 * i, 96 - 5 * i  # portrait and landscape, odd sizes
            px = np.clip(rng.normal(colour, 60, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / split / cls / f"{i}.png")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import graftkit

    root = tmp_path_factory.mktemp("export")
    _images(root / "data", "train", 6, 0)
    _images(root / "data", "val", N_VAL // 2, 1)
    run = graftkit.finetune(root / "data", "test_efficientnet", "linear_probe", epochs=1,
                            out=root / "run", quiet=True,
                            overrides={"model.pretrained": False, "model.image_size": 64,
                                       "report.enabled": False})
    return run.path


@pytest.fixture(scope="module")
def onnx_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "onnx"
    export_run(tiny_run, "onnx", out)
    return out


def _val_images(run: Path) -> list[Path]:
    meta = json.loads((run / "meta.json").read_text())
    return sorted(Path(meta["data"]["source"]).glob("val/*/*.png"))


def _bundle(path: Path) -> dict[str, Any]:
    return json.loads((path / "bundle.json").read_text())


def test_formats_registered() -> None:
    assert EXPORTERS.names() == ["onnx", "safetensors", "torchscript"]


def test_onnx_bundle_contents(tiny_run: Path, onnx_bundle: Path) -> None:
    import onnxruntime as ort

    assert sorted(p.name for p in onnx_bundle.iterdir()) == ["MODEL_CARD.md", "bundle.json",
                                                             "model.onnx", "reference.json"]
    b, meta = _bundle(onnx_bundle), json.loads((tiny_run / "meta.json").read_text())
    assert (b["format"], b["format_version"], b["model_format"]) == ("graftkit-bundle", 2, "onnx")
    assert b["task"] == "classification" and b["classes"] == ["blue", "red"]
    assert b["modality"] == "image" and b["preprocessing"]["kind"] == "image"
    assert b["model"]["arch"] == "test_efficientnet" and b["model"]["strategy"] == "linear_probe"
    assert {k: b["preprocessing"][k] for k in meta["preprocessing"]} == meta["preprocessing"]
    assert b["preprocessing"]["resize_short_side"] == round(64 / meta["preprocessing"]["crop_pct"])
    assert "center-crop 64x64" in b["preprocessing"]["recipe"].lower()
    assert b["calibration"]["temperature"] == meta["calibration"]["temperature"]
    (inp,) = b["inputs"]
    assert inp == {**inp, "name": "image", "shape": ["batch", 3, 64, 64], "dtype": "float32"}
    assert b["output"] == {**b["output"], "name": "logits", "shape": ["batch", 2]}
    assert b["opset"] >= 18 and "onnxruntime" in b["versions"]
    assert b["source_run"]["path"] == str(tiny_run.resolve())
    assert b["source_run"]["weights_sha256"] == sha256(tiny_run / "model.safetensors")
    p = b["parity"]
    assert p["passed"] and p["max_abs_diff"] <= 1e-4 and p["n"] == N_VAL
    assert p["labels_agree"] == N_VAL and p["preprocessing_max_abs_diff"] == 0.0
    assert set(b["files"]) == {"model.onnx", "MODEL_CARD.md", "reference.json"}
    for name, f in b["files"].items():
        assert f == {"sha256": sha256(onnx_bundle / name),
                     "bytes": (onnx_bundle / name).stat().st_size}
    sess = ort.InferenceSession(str(onnx_bundle / "model.onnx"))
    (inp,), (outp,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.shape[1:], outp.name) == ("image", [3, 64, 64], "logits")
    assert isinstance(inp.shape[0], str)  # a dynamic batch axis
    for n in (1, 3):
        assert sess.run(None, {"image": np.zeros((n, 3, 64, 64), np.float32)})[0].shape == (n, 2)


def test_model_card(tiny_run: Path, onnx_bundle: Path) -> None:
    card = (onnx_bundle / "MODEL_CARD.md").read_text()
    val = json.loads((tiny_run / "metrics.json").read_text())["val"]
    assert f"{val['accuracy']:.4f}" in card and f"{val['macro_f1']:.4f}" in card
    assert f"{val['uncalibrated']['ece']:.4f}" in card and f"{val['ece']:.4f}" in card
    for text in ("## Data", "## Limitations", "| train | 6 | 6 | 12 |", "`blue`", "64x64",
                 "has only 8 images", "no test split", "not measured", "BundlePredictor"):
        assert text in card, text


def test_bundle_predictor_matches_run_predict(tiny_run: Path, onnx_bundle: Path) -> None:
    from graftkit import Run

    images = _val_images(tiny_run)
    want = Run(tiny_run).predict(images, topk=2)
    got = BundlePredictor(onnx_bundle).predict(images, topk=2)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    assert [g["input"] for g in got] == [w["input"] for w in want]
    for g, w in zip(got, want):
        assert abs(g["prob"] - w["prob"]) < 1e-5
        assert [t["label"] for t in g["top"]] == [t["label"] for t in w["top"]]
    pil = BundlePredictor(onnx_bundle).predict(Image.open(images[0]), topk=1)
    assert pil[0]["input"] == "<image>" and pil[0]["label"] == want[0]["label"]


def test_bundle_predictor_decides_like_graftkit(tiny_run: Path, onnx_bundle: Path) -> None:
    from graftkit.evaluate.calibration import Calibration
    from graftkit.inference import describe as _describe

    pred = BundlePredictor(onnx_bundle)
    x = np.stack([preprocess(Image.open(f).convert("RGB"), pred.preprocessing)
                  for f in _val_images(tiny_run)])
    logits = pred.logits({"image": x})
    meta = json.loads((tiny_run / "meta.json").read_text())
    for t, thr in ((0.7, None), (1.3, 0.3), (1.0, 0.999)):
        pred.temperature, pred.threshold = t, thr
        meta["calibration"] = {"temperature": t, "threshold": thr, "positive_class": "red"}
        cal = Calibration.from_meta(meta)
        for row in logits:
            want = _describe("x", torch.from_numpy(row), meta, 2, cal)
            got = pred.describe("x", row, 2)
            assert got["label"] == want["label"] and abs(got["prob"] - want["prob"]) < 1e-6
    # A regression bundle: the first output, de-standardised.
    pred.task, pred.bundle["target_stats"] = "regression", {"mean": 12.5, "std": 3.0}
    meta.update(task="regression", target_stats=pred.bundle["target_stats"])
    for row in logits:
        want = _describe("x", torch.from_numpy(row), meta, 2, Calibration())
        assert pred.describe("x", row, 2) == pytest.approx(want)


def test_light_predictor_imports_no_torch(tiny_run: Path, onnx_bundle: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "from graftkit.export.light import BundlePredictor\n"
        f"r = BundlePredictor({str(onnx_bundle)!r}).predict({str(_val_images(tiny_run)[0])!r})\n"
        "assert r[0]['label'] in ('blue', 'red'), r\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torchvision', 'timm', 'sklearn')]\n"
        "assert not bad, bad\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_bundle_predictor_errors(tmp_path: Path, onnx_bundle: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(BadInput, match="broken.jpg: not an image") as e:
        BundlePredictor(onnx_bundle).predict([broken])
    assert isinstance(e.value, GraftError)
    with pytest.raises(GraftError, match="not an export bundle"):
        BundlePredictor(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(onnx_bundle, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(GraftError, match="does not match the sha256"):
        BundlePredictor(copy)
    bundle = _bundle(copy)
    for name in ("../model.onnx", "/etc/passwd", ".."):  # bundle.json names a file inside it
        (copy / "bundle.json").write_text(json.dumps({**bundle, "model_file": name}))
        with pytest.raises(GraftError, match="must be a file name inside the bundle"):
            BundlePredictor(copy)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_bundle(tiny_run: Path, tmp_path: Path) -> None:
    from graftkit import Run

    b = export_run(tiny_run, "torchscript", tmp_path / "ts")
    assert b["parity"]["passed"] and b["parity"]["max_abs_diff"] <= 1e-4
    f = tmp_path / "ts" / "model.torchscript.pt"
    assert _bundle(tmp_path / "ts")["files"]["model.torchscript.pt"]["sha256"] == sha256(f)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(f))(x), Run(tiny_run).model(x), atol=1e-5)


def test_safetensors_bundle_rebuilds(tiny_run: Path, tmp_path: Path,
                                     onnx_bundle: Path) -> None:
    from safetensors.torch import load_file

    from graftkit import Run

    b = export_run(tiny_run, "safetensors", tmp_path / "st")
    assert b["parity"]["passed"] and b["num_outputs"] == 2
    assert {"arch", "dropout"} <= set(b["model"])
    model = rebuild_from_bundle(tmp_path / "st")
    run_model = Run(tiny_run).model
    state = load_file(str(tmp_path / "st" / "model.safetensors"))
    assert state.keys() == run_model.state_dict().keys()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), run_model(x), atol=1e-5)
    with pytest.raises(GraftError, match="not safetensors"):
        rebuild_from_bundle(onnx_bundle)


def test_refuses_to_overwrite(tiny_run: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(GraftError, match="not empty|not an export bundle"):
            export_run(tiny_run, "safetensors", foreign, overwrite=overwrite)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    (tmp_path / "file").write_text("")
    with pytest.raises(GraftError, match="is a file"):
        export_run(tiny_run, "safetensors", tmp_path / "file")
    out = tmp_path / "bundle"
    export_run(tiny_run, "safetensors", out)
    (out / "stale.txt").write_text("left by an older export")
    with pytest.raises(GraftError, match="pass --overwrite"):
        export_run(tiny_run, "safetensors", out)
    export_run(tiny_run, "safetensors", out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "bundle.json",
                                                     "model.safetensors", "reference.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    export_run(tiny_run, "safetensors", empty)  # an empty folder is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "empty", "file", "foreign"]


def test_bad_requests(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(GraftError, match="unknown export format 'tflite'; choose one of: onnx"):
        export_run(tiny_run, "tflite", tmp_path / "x")
    with pytest.raises(GraftError, match="--opset is for the onnx format"):
        export_run(tiny_run, "torchscript", tmp_path / "x", opset=18)
    with pytest.raises(GraftError, match="--opset 17"):
        export_run(tiny_run, "onnx", tmp_path / "x", opset=17)
    with pytest.raises(GraftError, match="does not exist"):
        export_run(tmp_path / "nope", "onnx", tmp_path / "x")
    with monkeypatch.context() as m:
        m.setitem(EXPORTERS._items, "onnx", dataclasses.replace(EXPORTERS.get("onnx"),
                                                               requires=("onnx", "no_such_mod")))
        with pytest.raises(GraftError, match=r"onnx format needs no_such_mod: pip install "
                                             r"'graftkit\[export\]'"):
            export_run(tiny_run, "onnx", tmp_path / "x")
    stopped = tmp_path / "stopped"
    shutil.copytree(tiny_run, stopped)
    meta = json.loads((stopped / "meta.json").read_text())
    (stopped / "meta.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    with pytest.raises(GraftError, match="has not completed"):
        export_run(stopped, "onnx", tmp_path / "x")
    meta["preprocessing"] = {"kind": "text", "tokenizer": "bert", "max_length": 64}
    meta["modality"] = "text"
    (stopped / "meta.json").write_text(json.dumps({**meta, "status": "completed"}))
    monkeypatch.setattr(modalities.get("text"), "exportable", False)  # a modality it cannot take
    with pytest.raises(GraftError, match="writes audio, image models; .* has a text model"):
        export_run(stopped, "onnx", tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stopped"]  # nothing half-written


def test_onnx_exporter_failure(tiny_run: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("\x1b[96mstep 1/3\x1b[0m failed\nthe details")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(GraftError, match=r"^ONNX export failed \(RuntimeError: step 1/3 failed\); "
                                         "try --format torchscript or safetensors$"):
        export_run(tiny_run, "onnx", tmp_path / "x")
    assert not list(tmp_path.iterdir())


def test_parity_failure_leaves_nothing(tiny_run: Path, onnx_bundle: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    from onnx import numpy_helper

    real = EXPORTERS.get("onnx")

    def corrupt(model: torch.nn.Module, sig: Any, path: Path, opset: int | None
                ) -> dict[str, Any]:
        shutil.copy(onnx_bundle / "model.onnx", path)  # this run's export, as written
        proto = onnx.load(str(path))
        head = next(t for t in proto.graph.initializer if "head" in t.name and t.dims == [2, 256])
        head.CopyFrom(numpy_helper.from_array(-5 * numpy_helper.to_array(head), head.name))
        onnx.save(proto, str(path))
        return {"opset": 20}

    monkeypatch.setitem(EXPORTERS._items, "onnx", dataclasses.replace(real, write=corrupt))
    out = tmp_path / "bundle"
    export_run(tiny_run, "safetensors", out)
    with pytest.raises(GraftError, match=r"ONNX export does not match the eager model: max \|dp\| "
                                         r"= [0-9.e-]+ > 0.0001"):
        export_run(tiny_run, "onnx", out, overwrite=True)
    assert _bundle(out)["model_format"] == "safetensors"  # the bundle being replaced is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no partial folder left


def test_parity_without_the_run_data(tiny_run: Path, tmp_path: Path) -> None:
    moved = tmp_path / "run"
    shutil.copytree(tiny_run, moved)
    cfg = (moved / "config.yaml").read_text()
    source = json.loads((moved / "meta.json").read_text())["data"]["source"]
    (moved / "config.yaml").write_text(cfg.replace(source, str(tmp_path / "gone")))
    b = export_run(moved, "safetensors", tmp_path / "bundle")
    assert b["parity"]["passed"] and b["parity"]["n"] == 8
    assert b["parity"]["inputs"].startswith("8 random-noise images")


def test_card_robustness_and_cli(tiny_run: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "robustness").mkdir()
    (run / "robustness" / "results.json").write_text(json.dumps({
        "clean_accuracy": 0.75, "mca": 0.6, "relative_robustness": 0.8, "n": 8, "split": "val",
        "severities": [1, 3, 5], "seed": 0, "corruptions": {
            "gaussian_noise": {"severity": {"1": 0.7, "3": 0.5, "5": 0.3}, "mean": 0.5},
            "defocus_blur": {"severity": {"1": 0.75, "3": 0.7, "5": 0.65}, "mean": 0.7}}}))
    cli_export(run, "safetensors", None, overwrite=False)
    printed = capsys.readouterr().out
    out = (tmp_path / "run-safetensors").resolve()  # the default: beside the run
    for text in (str(out), "model.safetensors", "MODEL_CARD.md", "bundle.json",
                 "parity: max |dp|", "labels agree 8/8"):
        assert text in printed, text
    card = (out / "MODEL_CARD.md").read_text()
    for text in ("mean corruption accuracy (mCA) 0.6000", "relative robustness (mCA / clean "
                 "accuracy) 0.8000", "gaussian_noise 0.5000", "falls to 60.0%",
                 "rebuild_from_bundle"):
        assert text in card, text


@pytest.mark.parametrize("size,crop_pct,interp", [(64, 0.875, "bicubic"), (48, 1.0, "bilinear"),
                                                  (40, 1.15, "nearest"), (32, 0.9, "lanczos")])
def test_preprocess_matches_eval_transform(size: int, crop_pct: float, interp: str) -> None:
    from graftkit.data.transforms import DataConfig, eval_transform

    dc = DataConfig(size, crop_pct, interp, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    rng = np.random.default_rng(0)
    for h, w in ((90, 120), (120, 90), (33, 33), (1, 77), (301, 45)):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        np.testing.assert_array_equal(preprocess(img, dc.to_dict()),
                                      eval_transform(dc)(img).numpy())


def test_regression_run(tiny_run: Path, tmp_path: Path) -> None:
    import graftkit

    images = sorted(Path(json.loads((tiny_run / "meta.json").read_text())["data"]["source"])
                    .glob("*/*/*.png"))
    rows = ["path,label"] + [f"{f},{10 + i % 7}" for i, f in enumerate(images)]
    (tmp_path / "r.csv").write_text("\n".join(rows) + "\n")
    run = graftkit.finetune(tmp_path / "r.csv", "test_efficientnet", "linear_probe", epochs=1,
                            out=tmp_path / "run", quiet=True,
                            overrides={"task": "regression", "model.pretrained": False,
                                       "model.image_size": 64, "report.enabled": False})
    b = export_run(run.path, "safetensors", tmp_path / "bundle")
    assert b["task"] == "regression" and b["calibration"] is None and b["parity"]["passed"]
    assert b["target_stats"] == run.meta["target_stats"] and "labels_agree" not in b["parity"]
    assert b["output"]["shape"] == ["batch", 1] and "target_stats.std" in b["output"]["description"]
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    val = run.metrics["val"]
    assert "An image regressor" in card and f"{val['rmse']:.4f}" in card
    assert "| val | " in card and "## Calibration" not in card


def test_version_1_bundle_still_predicts(tiny_run: Path, onnx_bundle: Path,
                                         tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(onnx_bundle, old)
    b = _bundle(old)
    pre = {k: v for k, v in b["preprocessing"].items() if k != "kind"}
    v1 = {k: v for k, v in b.items() if k not in ("inputs", "modality")}
    (old / "bundle.json").write_text(json.dumps({**v1, "format_version": 1,
                                                 "input": b["inputs"][0], "preprocessing": pre}))
    images = _val_images(tiny_run)
    want = BundlePredictor(onnx_bundle).predict(images, topk=2)
    assert BundlePredictor(old).predict(images, topk=2) == want


# --- a text run -------------------------------------------------------------------------------
L3 = "paraphrase-MiniLM-L3-v2"
TEXTS = ["WINNER!! Claim your free prize now, call 0800 123", "see you at lunch tomorrow?",
         "Café au lait, s'il vous plaît 😀", "ok", "Please call me back when you get this " * 30]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import csv

    import graftkit

    rows = list(csv.reader((shared_dataset("sms_spam") / "train.csv").open(encoding="utf-8")))
    take = [r[:2] for c in ("ham", "spam") for r in [x for x in rows[1:] if x[1] == c][:20]]
    root = tmp_path_factory.mktemp("text")
    with (root / "sms.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"], *take])
    run = graftkit.finetune(root / "sms.csv", L3, "linear_probe", epochs=1, out=root / "run",
                            quiet=True, overrides={"report.enabled": False})
    return run.path


@pytest.fixture(scope="module")
def text_bundle(text_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("text-bundles") / "onnx"
    export_run(text_run, "onnx", out)
    return out


def _val_texts(run: Path) -> list[str]:
    from graftkit.inference import LoadedRun, run_split

    return [t for t, _ in run_split(LoadedRun(run), "val")[0]]


def test_preprocessors_registered() -> None:
    assert PREPROCESSORS.names() == ["audio", "image", "text"]


def test_text_onnx_bundle_contents(text_run: Path, text_bundle: Path) -> None:
    import onnxruntime as ort

    b, meta = _bundle(text_bundle), json.loads((text_run / "meta.json").read_text())
    assert (b["modality"], b["model"]["name"], b["classes"]) == ("text", L3, ["ham", "spam"])
    assert set(b["files"]) == {"model.onnx", "MODEL_CARD.md", "reference.json",
                               "text_model/config.json", "text_model/tokenizer.json",
                               "text_model/tokenizer_config.json"}
    assert (text_bundle / "text_model" / "tokenizer.json").read_bytes() == (
        text_run / "text_model" / "tokenizer.json").read_bytes()
    pre = b["preprocessing"]
    assert {k: pre[k] for k in meta["preprocessing"]} == meta["preprocessing"]
    assert pre["kind"] == "text" and pre["tokenizer_file"] == "text_model/tokenizer.json"
    names = ["input_ids", "attention_mask", "token_type_ids"]
    assert pre["input_names"] == [i["name"] for i in b["inputs"]] == names
    assert all(i["shape"] == ["batch", "sequence"] and i["dtype"] == "int64" for i in b["inputs"])
    assert f"Truncate to {pre['max_length']} tokens" in pre["recipe"]
    p = b["parity"]
    assert p["passed"] and p["max_abs_diff"] <= 1e-4 and p["n"] == N_VAL
    assert p["inputs"] == f"{N_VAL} val texts of the run's data" and p["labels_agree"] == N_VAL
    assert p["preprocessing_max_abs_diff"] == 0.0 and "tokenizers" in p["preprocessing_compared"]
    sess = ort.InferenceSession(str(text_bundle / "model.onnx"))
    assert [i.name for i in sess.get_inputs()] == names
    assert all(isinstance(d, str) for i in sess.get_inputs() for d in i.shape)  # both dynamic
    card = (text_bundle / "MODEL_CARD.md").read_text()
    for text in ("A text classifier for 2 classes", "Texts per split", "| train | 16 | 16 | 32 |",
                 f"Texts are cut after {pre['max_length']} tokens", "Hugging Face encoder",
                 "Robustness to text perturbations", "numpy, onnxruntime, tokenizers",
                 "`input_ids` (batch, sequence, int64)", "text_model/tokenizer.json"):
        assert text in card, text
    assert "image" not in card.lower() and "photo" not in card.lower()


def test_text_bundle_predictor_matches_run_predict(text_run: Path, text_bundle: Path) -> None:
    from graftkit import Run

    run, pred = Run(text_run), BundlePredictor(text_bundle)
    texts = _val_texts(text_run) + TEXTS
    want = run.predict(texts, topk=2)
    got = pred.predict(texts, topk=2, batch_size=3)  # batches padded to other lengths
    assert [g["input"] for g in got] == texts
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want):
        assert abs(g["prob"] - w["prob"]) <= 1e-4
        assert [t["label"] for t in g["top"]] == [t["label"] for t in w["top"]]
        assert all(abs(a["prob"] - b["prob"]) <= 1e-4 for a, b in zip(g["top"], w["top"]))
    # The raw logits too: the run's 1-epoch calibration flattens the probabilities.
    with torch.no_grad():
        eager = run.model(run.model.tokenize(texts)).numpy()
    assert np.abs(pred.logits(pred.preprocessor(texts)) - eager).max() <= 1e-4
    assert pred.predict("see you at lunch tomorrow?")[0]["label"] == want[TEXTS.index(
        "see you at lunch tomorrow?") + N_VAL]["label"]


def test_text_light_predictor_imports_no_torch(text_bundle: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "from graftkit.export.light import BundlePredictor\n"
        f"r = BundlePredictor({str(text_bundle)!r}).predict({TEXTS!r})\n"
        "assert [x['label'] in ('ham', 'spam') for x in r] == [True] * 5, r\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('transformers', 'timm', 'sklearn')]\n"
        "assert not bad, bad\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_text_bundle_errors(text_bundle: Path, tmp_path: Path) -> None:
    pred = BundlePredictor(text_bundle)
    for bad in ("", "   \n"):
        with pytest.raises(BadInput, match="^empty text: every input needs some words$"):
            pred.predict(["fine", bad])
    copy = tmp_path / "copy"
    shutil.copytree(text_bundle, copy)
    with open(copy / "text_model" / "tokenizer.json", "ab") as f:
        f.write(b" ")
    with pytest.raises(GraftError, match="tokenizer.json' does not match the sha256"):
        BundlePredictor(copy)
    b = _bundle(copy)
    b["preprocessing"]["tokenizer_file"] = "../tokenizer.json"
    (copy / "bundle.json").write_text(json.dumps(b))
    with pytest.raises(GraftError, match="tokenizer_file '../tokenizer.json' must be a file name "
                                         "inside the bundle"):
        BundlePredictor(copy)


def test_text_bundle_is_served_like_bundle_predictor(text_bundle: Path) -> None:
    from graftkit.serve import open_backend

    backend = open_backend(text_bundle)
    assert backend.modality.name == "text"
    backend.load()
    backend.warmup()
    rows = backend.forward([backend.prepare(t) for t in TEXTS])
    want = BundlePredictor(text_bundle).predict(TEXTS, topk=2)
    assert [backend.describe(r, 2) for r in rows] == [
        {k: v for k, v in w.items() if k != "input"} for w in want]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_text_torchscript_and_safetensors_bundles(text_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from graftkit import Run
    from graftkit.models.text import HFTextAdapter

    model = Run(text_run).model
    enc = model.tokenize(TEXTS)
    with torch.no_grad():
        want = model(enc)
    cli_export(text_run, "torchscript", tmp_path / "ts")
    printed = capsys.readouterr().out
    for text in ("text_model/tokenizer.json", "parity: max |dp|", "labels agree 8/8",
                 "on 8 val texts of the run's data", "max |dx| = 0 (token ids"):
        assert text in printed, text
    ts = torch.jit.load(str(tmp_path / "ts" / "model.torchscript.pt"))
    with torch.no_grad():
        got = ts(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    assert torch.allclose(got, want, atol=1e-5)
    b = export_run(text_run, "safetensors", tmp_path / "st")
    assert b["parity"]["passed"] and (tmp_path / "st" / "text_model" / "config.json").is_file()
    rebuilt = rebuild_from_bundle(tmp_path / "st")
    assert isinstance(rebuilt, HFTextAdapter)
    with torch.no_grad():
        assert torch.allclose(rebuilt(enc), want, atol=1e-5)
