"""What ``graft list`` shows, without importing torch.

The registries live in modules that need torch, torchvision and timm (several seconds to import);
``graft list`` must answer in well under a second. ``catalogue.json`` beside this file holds every
registry's names and help, written from the real registries by

    python -m graftkit.cli.catalogue --write

and a unit test fails when it no longer matches them (a strategy, loss or model added without
rewriting it). ``graft list --live`` reads the registries themselves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PATH = Path(__file__).with_name("catalogue.json")
TIMM_ROW = ("<timm name>", "any timm model (hub weights need a network)")


def registries() -> list[Any]:
    """The registries ``graft list`` shows, in its order (imports torch)."""
    from ..data.transforms import AUGMENTATIONS
    from ..modalities import MODALITIES
    from ..models.vision import MODELS
    from ..robustness.perturbations import PERTURBATIONS
    from ..strategies import STRATEGIES
    from ..train.losses import LOSSES
    from ..train.optim import OPTIMIZERS, SCHEDULES

    return [MODALITIES, MODELS, STRATEGIES, OPTIMIZERS, SCHEDULES, LOSSES, AUGMENTATIONS,
            PERTURBATIONS]


def build() -> list[dict[str, Any]]:
    """The catalogue as the registries say it now."""
    out = []
    for reg in registries():
        rows = [[name, reg.help(name)] for name in reg.names()]
        if reg.kind == "model":
            rows.append(list(TIMM_ROW))
        out.append({"title": reg.plural, "rows": rows})
    return out


def load() -> list[dict[str, Any]]:
    return json.loads(PATH.read_text(encoding="utf-8"))


def write() -> Path:
    PATH.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return PATH


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m graftkit.cli.catalogue --write")
    print(write())
