"""Robustness-aware training: WiSE-FT weight mixing and the AugMix preset, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graftkit.train.wise_ft import pick_alpha
from tests.conftest import shared_dataset

from .conftest import TINY, graft, read_history

pytestmark = pytest.mark.integration


def test_wise_ft_mixes_probe_and_finetuned_weights(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "wise"
    graft("train", "--data", small_csv, "--strategy", "lp_ft", "--out", out, "--epochs", "2",
          *TINY, "strategy.probe_epochs=2", "--wise-ft", "--augment", "augmix")
    assert [h["stage"] for h in read_history(out)] == ["probe"] * 2 + ["finetune"] * 2
    probe = load_file(str(out / "checkpoints" / "probe.safetensors"))
    ft = load_file(str(out / "checkpoints" / "finetuned.safetensors"))
    mixed = load_file(str(out / "model.safetensors"))
    moved = [k for k in ft if ft[k].is_floating_point() and not torch.equal(ft[k], probe[k])]
    assert moved, "fine-tuning changed no weight"
    meta = json.loads((out / "meta.json").read_text())
    alpha, sweep = meta["wise_ft"]["alpha"], meta["wise_ft"]["sweep"]
    assert [r["alpha"] for r in sweep] == [round(0.1 * i, 1) for i in range(11)]
    assert alpha == pick_alpha(sweep)
    assert sweep[[r["alpha"] for r in sweep].index(alpha)]["objective"] == max(
        r["objective"] for r in sweep)
    for k in moved:
        assert torch.allclose(mixed[k], (1 - alpha) * probe[k] + alpha * ft[k], atol=1e-6), k
    # alpha = 1 is the fine-tuned model: the sweep's end matches its validation score
    best_ft = max(h["val_accuracy"] for h in read_history(out) if h["stage"] == "finetune")
    assert sweep[-1]["val_accuracy"] == pytest.approx(best_ft)
    # the probe snapshot is the head the fine-tuning started from, not a random one
    head = [k for k in probe if k.startswith("head")]
    assert head and all(probe[k].abs().sum() > 0 for k in head)
    # predict and evaluate use the mixed weights like any run
    m = json.loads(graft("evaluate", out, "--split", "val", "--json").stdout)
    assert m["accuracy"] == json.loads((out / "metrics.json").read_text())["val"]["accuracy"]


def test_augmix_with_jensen_shannon_loss_trains(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "jsd"
    graft("train", "--data", small_csv, "--strategy", "full", "--out", out, "--epochs", "1",
          *TINY, "--augment", "augmix_jsd", "report.enabled=false")
    hist = read_history(out)
    assert len(hist) == 1 and hist[0]["train_loss"] > 0
    bad = graft("train", "--data", small_csv, "--out", tmp_path / "x", *TINY, "--augment",
                "augmix_jsd", "train.mixup=0.2", check=False)
    assert bad.returncode == 2 and "augmix_jsd" in bad.stderr


def test_wise_ft_needs_a_probe_stage(small_csv: Path, tmp_path: Path) -> None:
    proc = graft("train", "--data", small_csv, "--strategy", "full", "--out", tmp_path / "x",
                 *TINY, "--wise-ft", check=False)
    assert proc.returncode == 2 and "lp_ft" in proc.stderr and "Traceback" not in proc.stderr


def test_robustness_benchmark_report_and_mce(probe_run: Path, small_csv: Path,
                                             tmp_path: Path) -> None:
    args = ["--corruptions", "gaussian_noise,defocus_blur", "--severities", "1,5", "--limit",
            "24", "--workers", "2", "-q"]
    proc = graft("robustness", probe_run, *args, "--engine", "torch")
    assert "mCA" in proc.stdout and "report:" in proc.stdout and "model: torch" in proc.stdout
    res = json.loads((probe_run / "robustness" / "results.json").read_text())
    assert res["engine"].startswith("torch")
    assert res["n"] == 24 and res["severities"] == [1, 5] and res["split"] == "val"
    assert set(res["corruptions"]) == {"gaussian_noise", "defocus_blur"}
    cells = [a for c in res["corruptions"].values() for a in c["severity"].values()]
    assert res["mca"] == pytest.approx(sum(cells) / 4)
    assert res["relative_robustness"] == pytest.approx(res["mca"] / res["clean_accuracy"])
    # a pretrained probe loses accuracy under severity-5 noise, not under nothing
    noise = res["corruptions"]["gaussian_noise"]["severity"]
    assert noise["5"] < res["clean_accuracy"] and res["clean_accuracy"] >= 0.85
    for png in ("accuracy_vs_severity.png", "heatmap.png", "examples.png"):
        assert (probe_run / "robustness" / png).stat().st_size > 5000
    page = (probe_run / "eval" / "hymenoptera_256-val" / "report.html").read_text()
    assert 'id="robustness"' in page and f"{res['mca']:.4f}" in page

    # a second run, scored against the probe as the reference model
    other = tmp_path / "tiny"
    graft("train", "--data", small_csv, "--out", other, "--epochs", "1", *TINY,
          "report.enabled=false")
    bad = graft("robustness", other, "--reference", other, *args, check=False)
    assert bad.returncode == 2 and "no robustness results" in bad.stderr
    # the same cells with the backbone on ONNX Runtime (the default where it is installed, in
    # process: --workers 0) and on torch: the same accuracies
    # (the probe's examples: its own data, the same split, limit and seed)
    same = ["--data", str(shared_dataset("hymenoptera_256")), "--split", "val"]
    graft("robustness", other, *same, *args, "--engine", "torch")
    on_torch = json.loads((other / "robustness" / "results.json").read_text())
    elsewhere = graft("robustness", other, "--reference", probe_run, *args, check=False)
    assert elsewhere.returncode == 2 and "measured on other examples" in elsewhere.stderr
    graft("robustness", other, *same, "--reference", probe_run, *args, "--workers", "0")
    mine = json.loads((other / "robustness" / "results.json").read_text())
    assert mine["engine"].startswith("onnxruntime")
    assert mine["corruptions"] == on_torch["corruptions"] and mine["mca"] == on_torch["mca"]
    ref = mine["reference"]
    errs = [1 - a for a in mine["corruptions"]["gaussian_noise"]["severity"].values()]
    ref_errs = [1 - a for a in noise.values()]
    assert ref["ce"]["gaussian_noise"] == pytest.approx(sum(errs) / sum(ref_errs))
    assert ref["mce"] == pytest.approx(sum(ref["ce"].values()) / 2)
    table = graft("compare", probe_run, other, "--split", "val").stdout
    assert "mCA" in table and "mCE" in table

    unknown = graft("robustness", probe_run, "--corruptions", "rain", check=False)
    assert unknown.returncode == 2 and "gaussian_noise" in unknown.stderr
