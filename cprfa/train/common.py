"""What the training loops share: the optimizer with its decaying learning rate, and each epoch's loader."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader, Dataset


def decaying_adam(parameters: Iterable[torch.nn.Parameter], lr: float, final_lr_ratio: float,
                  epochs: int) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.ExponentialLR]:
    """ADAM, and a scheduler (stepped once per epoch) that decays its learning rate exponentially from ``lr``
    to ``lr × final_lr_ratio`` at the last epoch."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    decay = final_lr_ratio ** (1 / max(epochs - 1, 1))
    return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, decay)


def epoch_loader(dataset: Dataset, batch_size: int, workers: int, seed: int, epoch: int) -> DataLoader:
    """Shuffled full batches of ``dataset``, in an order fixed by the seed and the epoch."""
    return DataLoader(dataset, batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed * 1000 + epoch))
