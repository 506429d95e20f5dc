"""What the training loops share: the optimizer with its decaying learning rate, and each epoch's batches."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


def decaying_adam(parameters: Iterable[torch.nn.Parameter], lr: float, final_lr_ratio: float,
                  epochs: int) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.ExponentialLR]:
    """ADAM, and a scheduler (stepped once per epoch) that decays its learning rate exponentially from ``lr``
    to ``lr × final_lr_ratio`` at the last epoch."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    decay = final_lr_ratio ** (1 / max(epochs - 1, 1))
    return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, decay)


def epoch_batches(dataset: Dataset, settings, epoch: int, progress: bool) -> tqdm:
    """Epoch ``epoch`` of ``dataset`` (augmented afresh for it: ``dataset.epoch``) in shuffled full batches of
    ``settings.batch_size``, in an order fixed by ``settings.seed`` and the epoch, behind a progress bar."""
    dataset.epoch = epoch
    loader = DataLoader(dataset, settings.batch_size, shuffle=True, drop_last=True, num_workers=settings.workers,
                        generator=torch.Generator().manual_seed(settings.seed * 1000 + epoch))
    return tqdm(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch", disable=not progress)
