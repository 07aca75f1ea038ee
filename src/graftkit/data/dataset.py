"""Torch datasets over the audited examples."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .images import BadImage, load_image
from .spec import typed_target


class ImageDataset(Dataset):
    """``(path, target)`` pairs -> ``(image tensor (C, H, W), target)``."""

    def __init__(
        self, items: Sequence[tuple[str, float]], transform: Callable, task: str = "classification"
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.task = task

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, target = self.items[i]
        try:
            img = load_image(path)
        except BadImage as e:  # audited before training, so the file changed underneath us
            raise DataError(
                f"{path}: {e.reason} (it was readable when the data was audited)"
            ) from None
        x = self.transform(img)
        y = torch.tensor(typed_target(target, self.task))
        return x, y
