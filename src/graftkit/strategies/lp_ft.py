"""LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"): first a linear probe,
then full fine-tuning starting from that head. A good head first means the early fine-tuning
gradients do not wreck the pretrained features, which helps both accuracy and robustness.

``train.epochs`` counts the fine-tuning stage; ``strategy.probe_epochs`` (default: the linear
probe's default) and ``strategy.probe_lr`` set the probe stage, which runs on cached features.
"""

from __future__ import annotations

from .base import ALL, STRATEGIES, Stage, Strategy, StrategyParams


def plan(epochs: int, lr: float, p: StrategyParams) -> list[Stage]:
    probe = STRATEGIES.get("linear_probe")
    return [
        Stage("probe", p.probe_epochs or probe.default_epochs, p.probe_lr, lambda e: 0),
        Stage("finetune", epochs, lr, lambda e: ALL),
    ]


STRATEGIES.register("lp_ft", "linear probe, then full fine-tune from that head (Kumar et al.)")(
    Strategy(plan, default_epochs=5, default_lr=1e-5)
)
