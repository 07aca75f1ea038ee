"""Audio classification end to end on real spoken digits (../shared/data/fsdd) with the built-in
Whisper tiny.en encoder: the same commands and run directory as images and texts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import shared_dataset

pytestmark = pytest.mark.integration
DIGITS = ("1", "4", "7")
SPEAKERS = ("george", "jackson", "lucas", "nicolas")


def _clips(digit: str, indices: range) -> list[Path]:
    root = shared_dataset("fsdd") / digit
    return [root / f"{digit}_{s}_{i}.wav" for s in SPEAKERS for i in indices]


@pytest.fixture(scope="module")
def sounds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``train/<digit>/`` (official training files, 8 per digit, links to the shared set) plus a
    corrupt and a zero-byte WAV and a copy of one clip; ``test/<digit>/`` (official test files,
    index 0-4)."""
    d = tmp_path_factory.mktemp("sounds")
    for split, idx in (("train", range(5, 7)), ("test", range(0, 1))):
        for digit in DIGITS:
            (d / split / digit).mkdir(parents=True)
            for f in _clips(digit, idx):
                (d / split / digit / f.name).symlink_to(f)
    (d / "train" / "1" / "broken.wav").write_bytes(b"RIFF\0\0\0\0WAVEjunk")
    (d / "train" / "4" / "empty.wav").write_bytes(b"")
    copy = _clips("7", range(5, 6))[0]
    (d / "train" / "7" / "again.wav").write_bytes(copy.read_bytes())
    # a stereo 44.1 kHz 24-bit file and an 8 kHz mono 8-bit file of held-out clips
    import soxr

    four, rate = sf.read(_clips("4", range(2, 3))[0], dtype="float32")
    up = soxr.resample(four, rate, 44100)
    sf.write(d / "stereo44k.wav", np.stack([up, 0.8 * up], 1), 44100, subtype="PCM_24")
    seven, rate = sf.read(_clips("7", range(3, 4))[1], dtype="float32")
    sf.write(d / "u8.wav", seven, rate, subtype="PCM_U8")
    return {"root": d, "train": d / "train", "test": d / "test"}


@pytest.fixture(scope="module")
def probe(sounds: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from graftkit import finetune

    out = tmp_path_factory.mktemp("runs") / "probe"
    return finetune(sounds["train"], strategy="linear_probe", epochs=20, out=out, quiet=True,
                    overrides=["train.threads=2", "data.test_fraction=0.0"])


def test_probe_run_directory(probe) -> None:  # noqa: ANN001
    meta = json.loads((probe.path / "meta.json").read_text())
    assert meta["modality"] == "audio" and meta["classes"] == list(DIGITS)
    assert meta["model"]["name"] == "whisper-tiny.en"
    pre = meta["preprocessing"]
    assert pre["kind"] == "audio" and pre["window_s"] <= 2.5  # from the clips, not 30 s
    report = json.loads((probe.path / "data_report.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"broken.wav", "empty.wav"}
    assert "zero-byte" in skipped["empty.wav"] and "not a readable" in skipped["broken.wav"]
    durations = report["audio"]["durations"]["train"]
    assert 0.2 < durations["mean"] < 1.0 and durations["n"] > 0
    assert (probe.path / "audio_model" / "config.json").is_file()
    audit = json.dumps(report.get("audit", {}))
    assert "again.wav" in audit  # the copied clip is an exact duplicate


def test_predict_any_format_and_evaluate(probe, sounds: dict[str, Path]) -> None:  # noqa: ANN001
    from graftkit import load_run

    run = load_run(probe.path)
    got = run.predict([sounds["root"] / "stereo44k.wav", sounds["root"] / "u8.wav"])
    assert [p["label"] for p in got] == ["4", "7"]
    metrics = run.evaluate(sounds["test"], name="test")
    assert metrics["n"] == 12 and metrics["accuracy"] >= 0.9
    html = (probe.path / "eval" / "test" / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 2  # spectrogram thumbnails of the examples


def test_robustness_and_explain(probe, sounds: dict[str, Path], tmp_path: Path) -> None:  # noqa: ANN001
    from graftkit import load_run
    from graftkit.explain.api import explain_run

    run = load_run(probe.path)
    res = run.robustness(sounds["test"], corruptions="white_noise,lowpass", severities="1,5")
    assert res["kind"] == "perturbations"
    cells = res["corruptions"]
    assert set(cells) == {"white_noise", "lowpass"}
    # 0 dB white noise harms more than 30 dB
    assert cells["white_noise"]["severity"]["5"] <= cells["white_noise"]["severity"]["1"]
    assert (probe.path / "robustness" / "examples.png").stat().st_size > 10_000
    rec = explain_run(run, [_clips("1", range(0, 1))[0]], out_dir=tmp_path / "ex")[0]
    assert rec["method"] == "occlusion" and Path(rec["overlay"]).is_file()
    f = rec["faithfulness"]
    assert 0 <= f["deletion_auc"] <= 1 and len(f["deletion_curve"]) == 21


def test_serve_answers_a_wav_upload(probe) -> None:  # noqa: ANN001
    from starlette.testclient import TestClient

    from graftkit.serve import create_app, open_backend
    from graftkit.serve.app import Settings

    wav = _clips("7", range(0, 1))[2].read_bytes()
    png = next((shared_dataset("hymenoptera_256") / "val" / "ants").glob("*.jpg")).read_bytes()
    with TestClient(create_app(open_backend(probe.path), Settings())) as client:
        for _ in range(200):
            if client.get("/readyz").status_code == 200:
                break
            import time

            time.sleep(0.05)
        info = client.get("/v1/info").json()
        assert info["modality"] == "audio" and info["input"]["accept"].startswith("audio/")
        r = client.post("/v1/predict", files=[("file", ("seven.wav", wav, "audio/wav"))])
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["label"] == "7"
        bad = client.post("/v1/predict", files=[("file", ("ant.jpg", png, "image/jpeg"))])
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_audio"
        text = client.post("/v1/predict", json={"texts": ["seven"]})
        assert text.status_code == 400


def test_full_fine_tuning_trains_the_encoder(sounds: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from graftkit import finetune
    from graftkit.models.audio_builtin import load_builtin_encoder

    run = finetune(sounds["train"], strategy="full", epochs=1, out=tmp_path / "full",
                   quiet=True, overrides=["train.threads=2", "train.augment=standard",
                                          "data.audit=false", "data.batch_size=8"])
    weights = load_file(run.path / "model.safetensors")
    before = load_builtin_encoder("whisper-tiny.en").state_dict()
    moved = (weights["backbone.layers.0.fc1.weight"] - before["layers.0.fc1.weight"]).abs().max()
    assert float(moved) > 0  # the encoder trained, not only the head
    history = [json.loads(x) for x in (run.path / "history.jsonl").read_text().splitlines()]
    assert history and np.isfinite(history[-1]["train_loss"])


def test_refusals(sounds: dict[str, Path], tmp_path: Path) -> None:
    from graftkit import finetune
    from graftkit.errors import GraftError

    for overrides, match in ((["train.mixup=0.2"], "MixUp"),
                             (["train.augment=randaugment"], "augments images"),
                             (["model.name=efficientnet_lite0"], "not an audio model")):
        with pytest.raises(GraftError, match=match):
            finetune(sounds["train"], out=tmp_path / "x", quiet=True, overrides=overrides)
        assert not (tmp_path / "x").exists()
    assert os.listdir(tmp_path) == []


def test_export_onnx_bundle_predicts_like_the_run(probe, sounds: dict[str, Path],  # noqa: ANN001
                                                  tmp_path: Path) -> None:
    """The ONNX bundle of an audio run decodes the WAV and computes the log-mel itself, without
    torch, and gives the run's probabilities."""
    from graftkit import load_run
    from graftkit.export.bundle import export_run
    from graftkit.export.light import BadInput, BundlePredictor

    bundle = export_run(probe.path, "onnx", tmp_path / "bundle")
    assert bundle["modality"] == "audio" and bundle["preprocessing"]["kind"] == "audio"
    assert [i["name"] for i in bundle["inputs"]] == ["input", "length"]
    parity = bundle["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["labels_agree"] == parity["n"]
    assert "of the run's data" in parity["inputs"]
    clips = [sounds["root"] / "stereo44k.wav", *_clips("1", range(0, 1))[:2]]
    want = load_run(probe.path).predict(clips)
    got = BundlePredictor(tmp_path / "bundle").predict(clips)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want):
        assert abs(g["prob"] - w["prob"]) < 1e-4
    with pytest.raises(BadInput, match="not a readable sound file"):
        BundlePredictor(tmp_path / "bundle").predict([sounds["train"] / "1" / "broken.wav"])
