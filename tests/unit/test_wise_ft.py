"""WiSE-FT's weight interpolation and the choice of alpha from a validation sweep."""

from __future__ import annotations

import pytest
import torch

from graftkit.train.wise_ft import ALPHAS, interpolate, pick_alpha


def _sweep(accuracy: list[float], loss: list[float]) -> list[dict[str, float]]:
    return [{"alpha": a, "objective": acc, "val_accuracy": acc, "val_loss": lo}
            for a, acc, lo in zip(ALPHAS, accuracy, loss, strict=True)]


def test_pick_alpha_takes_the_best_objective() -> None:
    acc = [0.90, 0.91, 0.92, 0.93, 0.94, 0.94, 0.95, 0.96, 0.95, 0.94, 0.93]
    assert pick_alpha(_sweep(acc, [0.3] * 11)) == 0.7


def test_pick_alpha_breaks_ties_toward_the_middle_not_the_probe() -> None:
    # the hymenoptera LP-FT sweep: flat accuracy for alpha 0..0.8, loss rising with alpha; a
    # tie broken by loss alone would keep the probe (alpha 0) and drop the fine-tuning
    acc = [0.9477] * 9 + [0.9412] * 2
    loss = [0.134 + 0.0015 * i for i in range(11)]
    assert pick_alpha(_sweep(acc, loss)) == 0.5
    # tied only at the two ends, both 0.5 away from the middle: the lower loss wins
    acc = [0.95] + [0.90] * 9 + [0.95]
    assert pick_alpha(_sweep(acc, [0.2] + [0.3] * 9 + [0.1])) == 1.0
    assert pick_alpha(_sweep(acc, [0.1] + [0.3] * 9 + [0.2])) == 0.0
    # 0.4 and 0.6 are equally near the middle (despite float rounding): the lower loss wins
    acc = [0.9] * 4 + [0.95, 0.9, 0.95] + [0.9] * 4
    assert pick_alpha(_sweep(acc, [0.3] * 6 + [0.2] + [0.3] * 4)) == 0.6
    assert pick_alpha(_sweep(acc, [0.3] * 4 + [0.2] + [0.3] * 6)) == 0.4
    # a tie that excludes 0.5 goes to the nearest alpha
    acc = [0.9] * 6 + [0.95, 0.95, 0.95] + [0.9] * 2
    assert pick_alpha(_sweep(acc, [0.3] * 11)) == 0.6


def test_interpolate_mixes_floats_and_keeps_counters_of_the_finetuned_end() -> None:
    t0 = {"w": torch.zeros(3), "n": torch.tensor(5)}
    t1 = {"w": torch.ones(3) * 2, "n": torch.tensor(9)}
    mid = interpolate(t0, t1, 0.25)
    assert torch.allclose(mid["w"], torch.full((3,), 0.5)) and int(mid["n"]) == 9
    assert torch.equal(interpolate(t0, t1, 0.0)["w"], t0["w"])
    assert torch.equal(interpolate(t0, t1, 1.0)["w"], t1["w"])
    with pytest.raises(ValueError, match="different tensors"):
        interpolate(t0, {"w": t1["w"]}, 0.5)
