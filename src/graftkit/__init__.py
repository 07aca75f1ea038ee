"""graftkit: graft a new head onto a pretrained network and fine-tune it on your own data.

Importing this package is cheap (no torch); the API loads it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Run", "finetune", "resume", "load_run", "__version__"]

if TYPE_CHECKING:
    from .api import Run, finetune, resume


def __getattr__(name: str) -> Any:
    if name in ("Run", "finetune", "resume"):
        from . import api

        return getattr(api, name)
    if name == "load_run":
        from .api import Run

        return Run.load
    raise AttributeError(name)
