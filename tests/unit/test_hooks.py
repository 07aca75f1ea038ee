"""The best epoch and early stopping are decided within each stage."""

from __future__ import annotations

from pathlib import Path

import torch

from graftkit.train.hooks import BestCheckpoint, EarlyStopping, LoopState


def test_a_new_stage_is_not_early_stopped_for_trailing_the_stage_before(tmp_path: Path) -> None:
    """A self-training round starts a new head below the probe's best; it improves on its own
    first epochs, so patience 2 must not end it after two epochs."""
    model = torch.nn.Module()
    model.head = torch.nn.Linear(4, 2)
    best = BestCheckpoint(tmp_path / "model.safetensors", "accuracy", head_only=[True, True, True])
    stop = EarlyStopping(patience=2, last_stage=2)
    state = LoopState(model)
    for stage, values in enumerate(([0.7, 0.9, 0.9], [0.5, 0.6, 0.7, 0.8])):
        state.stage_index = stage
        for h in (best, stop):
            h.on_stage_start(state)
        for v in values:
            state.epoch += 1
            record = {"val_accuracy": v}
            best.on_epoch_end(state, record)
            stop.on_epoch_end(state, record)
            assert not (state.stop or state.stop_stage), (stage, v)
        assert state.best == max(values)
    assert state.best_epoch == state.epoch  # the round's own best: its last epoch
    for v in (0.7, 0.75):  # then two epochs below the round's best end it
        state.epoch += 1
        best.on_epoch_end(state, {"val_accuracy": v})
        stop.on_epoch_end(state, {"val_accuracy": v})
    assert state.stop_stage and not state.stop
    best.on_train_end(state)
    assert (tmp_path / "model.safetensors").is_file()


def test_the_reports_round_scores_are_the_best_by_the_monitored_metric() -> None:
    """A run monitored by loss shows each self-training round's lowest validation loss."""
    from graftkit.evaluate.report import _semi

    meta = {"semi": {"rounds": [{"stage": "self-train 1"}]}, "monitor": "loss",
            "stages": [{"name": "probe"}]}
    hist = [{"stage": "probe", "val_loss": 0.7}, {"stage": "probe", "val_loss": 0.6},
            {"stage": "self-train 1", "val_loss": 0.69293},
            {"stage": "self-train 1", "val_loss": 0.69295}]
    semi = _semi(meta, hist)
    assert semi["rounds"][0]["val"] == 0.69293 and semi["labels_only_val"] == 0.6
