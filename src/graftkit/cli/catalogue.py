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
AUTO_ROW = ("auto", "the best built-in, chosen by cached probes (ranking in the run directory)")
COMBINED_ROW = ("<a>+<b>", "one head on several image backbones' concatenated features")
HUB_ROW = ("<hub name or folder>", "any Hugging Face model of the kind (the hub needs a network) "
           "or a local model folder")


def registries() -> list[Any]:
    """The registries ``graft list`` shows, in its order (imports torch)."""
    from ..data.transforms import AUGMENTATIONS
    from ..modalities import MODALITIES
    from ..models.audio import AUDIO_MODELS
    from ..models.text import TEXT_MODELS
    from ..models.vision import MODELS
    from ..robustness.perturbations import PERTURBATIONS
    from ..strategies import STRATEGIES
    from ..train.losses import LOSSES
    from ..train.optim import OPTIMIZERS, SCHEDULES

    return [MODALITIES, MODELS, TEXT_MODELS, AUDIO_MODELS, STRATEGIES, OPTIMIZERS, SCHEDULES,
            LOSSES, AUGMENTATIONS, PERTURBATIONS]


def build() -> list[dict[str, Any]]:
    """The catalogue as the registries say it now."""
    out = []
    for reg in registries():
        rows = [[name, reg.help(name)] for name in reg.names()]
        if reg.kind == "model":  # images
            rows += [list(AUTO_ROW), list(COMBINED_ROW), list(TIMM_ROW)]
        elif reg.kind.endswith(" model"):
            rows += [list(AUTO_ROW), list(HUB_ROW)]
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
