"""The modality registry: one module per kind of input (``image``, ``text``, ``audio``),
registered by name.

``get(name)`` returns the :class:`Modality` object everything downstream asks; ``of(meta)`` the one
of a run directory (runs from before modalities were recorded are image runs); ``detect(d)`` the
one of a data section whose ``modality`` is ``auto``. Adding a modality is one new module here
(plus its model adapter) and its name in the import line below.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from . import audio, image, text  # noqa: F401  (registration)
from .base import MODALITIES, Modality

DEFAULT = "image"


def get(name: str) -> Modality:
    return MODALITIES.get(name)


def of(meta: dict[str, Any]) -> Modality:
    """The modality of a run (its ``meta.json``)."""
    return MODALITIES.get(meta.get("modality") or DEFAULT)


def detect(d: Any) -> str:
    """The modality of the data section ``d`` (``d.modality``, or found from ``d.path``): the
    first registered modality other than the default that recognises the data, else the default."""
    if d.modality != "auto":
        if d.modality not in MODALITIES:
            raise ConfigError(f"config key 'data.modality': unknown modality {d.modality!r}; "
                              f"choose auto or one of: {', '.join(MODALITIES.names())}")
        return str(d.modality)
    found = [n for n in MODALITIES.names() if n != DEFAULT and get(n).detect(d.path, d)]
    return found[0] if found else DEFAULT


__all__ = ["DEFAULT", "MODALITIES", "Modality", "detect", "get", "of"]
