"""Adding a modality is one module: a toy third modality (2-d points in a CSV, a small MLP as its
"backbone"), registered here and nowhere else, trains, scores, calibrates, writes its report and
drift reference, predicts and evaluates through the same launch, session, loop and inference code
as images and texts. Nothing outside this file knows it exists."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from graftkit import run as rd
from graftkit.config import build_config
from graftkit.data.spec import DataSpec, label_map, stratified_split
from graftkit.errors import GraftError
from graftkit.export import export_run
from graftkit.inference import LoadedRun, evaluate, predict
from graftkit.launch import train
from graftkit.modalities import MODALITIES
from graftkit.modalities.base import Modality
from graftkit.models.base import layerwise_param_groups

CENTRES = {"left": (-2.0, 0.0), "right": (2.0, 0.0)}


@dataclass(frozen=True)
class PointsConfig:
    width: int = 16

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "points", **asdict(self)}


class PointsAdapter(nn.Module):
    collate = None

    def __init__(self, num_outputs: int, width: int = 16) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width),
                                      nn.ReLU())
        self.num_features, self._dc = width, PointsConfig(width)
        self.head = nn.Linear(width, num_outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, K)

    def blocks(self) -> list[list[str]]:
        return [["backbone.0.weight", "backbone.0.bias"], ["backbone.2.weight", "backbone.2.bias"]]

    def param_groups(self, lr: float, weight_decay: float, layer_decay: float = 1.0
                     ) -> list[dict[str, Any]]:
        return layerwise_param_groups(self, self.blocks(), lr, weight_decay, layer_decay)

    def make_dataset(self, items: Any, task: str, augment: str = "none") -> TensorDataset:
        x = torch.stack([parse(p) for p, _ in items])
        return TensorDataset(x, torch.tensor([int(t) for _, t in items]))

    def input_signature(self) -> str:
        return "points"

    @property
    def data_config(self) -> PointsConfig:
        return self._dc


def parse(item: str) -> torch.Tensor:
    return torch.tensor([float(v) for v in item.split(";")])


class PointsModality(Modality):
    name, noun, default_model = "points", "point", "points-mlp"
    json_field, form_field, form_files = "points", "point", False

    def discover(self, d: Any, task: str, progress: Any = None) -> DataSpec:
        with open(d.path, newline="") as f:
            rows = [(f"{r['x']};{r['y']}", r["label"]) for r in csv.DictReader(f)]
        classes, target = label_map([lab for _, lab in rows], [], task, d.path)
        groups = {c: [p for p, lab in rows if lab == c] for c in classes}
        parts = stratified_split(groups, d.val_fraction, d.test_fraction, d.split_seed)
        splits = {s: [(p, target(c)) for c, ps in pc.items() for p in ps]
                  for s, pc in parts.items() if any(pc.values())}
        return DataSpec(task, classes, splits, "points-csv", str(d.path), modality="points",
                        inline=True)

    def create_model(self, m: Any, spec: Any, n_out: int, out: Path, resuming: bool,
                     load_backbone: bool = True) -> tuple[Any, dict[str, Any]]:
        return PointsAdapter(n_out), {}

    def rebuild(self, path: Path, meta: dict[str, Any]) -> Any:
        return PointsAdapter(meta["num_outputs"], meta["preprocessing"]["width"])

    def load(self, item: Any) -> tuple[str, Any]:
        return str(item), parse(str(item))

    def batch(self, model: Any, prepared: list[Any]) -> Any:
        return torch.stack(prepared)  # (B, 2)


@pytest.fixture
def points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(MODALITIES._items, "points", PointsModality())
    rng = np.random.default_rng(0)
    f = tmp_path / "points.csv"
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["x", "y", "label"])
        for label, (cx, cy) in CENTRES.items():
            for x, y in rng.normal((cx, cy), 0.5, (60, 2)):
                w.writerow([f"{x:.4f}", f"{y:.4f}", label])
    return f


def test_a_new_modality_needs_only_its_module(points: Path, tmp_path: Path) -> None:
    cfg = build_config(None, {"data.path": str(points), "data.modality": "points",
                              "strategy.name": "full", "train.epochs": 8, "optim.lr": 0.01,
                              "train.threads": 1})
    run = train(cfg, out=tmp_path / "run", quiet=True)
    assert run.meta["modality"] == "points" and run.meta["model"]["name"] == "points-mlp"
    assert run.metrics["val"]["accuracy"] >= 0.95  # two blobs 4 standard deviations apart
    for f in (rd.WEIGHTS, rd.METRICS, rd.REFERENCE, rd.DATA_REPORT):
        assert (run.path / f).is_file(), f
    assert list((run.path / rd.EVAL).glob("*/report.html"))
    got = predict(LoadedRun(run.path), ["-2;0", "2;0"], topk=2)
    assert [r["label"] for r in got] == ["left", "right"]
    assert all(r["prob"] > 0.9 for r in got), got
    ev = evaluate(LoadedRun(run.path), None, split="val")
    assert ev["accuracy"] == pytest.approx(run.metrics["val"]["accuracy"])
    # What it does not implement, it refuses in one line: here, export.
    with pytest.raises(GraftError, match="^graft export writes audio, image, text.* models; "
                                         "run .* has a points model$"):
        export_run(run.path, "safetensors", tmp_path / "bundle")
    with pytest.raises(GraftError, match="^graft export does not take points models yet$"):
        PointsModality().export_signature(PointsAdapter(2))
