"""What the training loops share: the optimizer with its decaying learning rate, each epoch's batches, and
saving and resuming checkpoints."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cprfa.errors import CprfaError


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


def resume(checkpoint_path: Path, settings, network: torch.nn.Module, key: str, optimizer: torch.optim.Optimizer,
           scheduler, device: str = "cpu") -> tuple[int, float, list]:
    """Load a run's ``checkpoint.pt`` (``network`` from its entry ``key``, the optimizer and the scheduler) and
    return (epoch to start from, seconds trained, history); (0, 0.0, []) when there is none. Settings added
    since the checkpoint was made count at their defaults; any other difference is an error."""
    if not checkpoint_path.is_file():
        return 0, 0.0, []
    state = torch.load(checkpoint_path, map_location=device, weights_only=False)
    defaults = {item.name: item.default for item in fields(settings) if item.default is not MISSING}
    if {**defaults, **state["settings"]} != asdict(settings):
        raise CprfaError(f"{checkpoint_path} was made with other settings; use a new --out to start afresh")
    network.load_state_dict(state[key])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    print(f"resuming {checkpoint_path.parent} after epoch {state['epoch'] + 1}")
    return state["epoch"] + 1, state["seconds"], state["history"]


def save_checkpoint(checkpoint_path: Path, settings, network: torch.nn.Module, key: str,
                    optimizer: torch.optim.Optimizer, scheduler, epoch: int, seconds: float, history: list) -> None:
    """Write a run's ``checkpoint.pt`` after ``epoch`` (atomically: a crash leaves the last one whole), what
    ``resume`` reads, and the history beside it as ``history.jsonl``."""
    partial = checkpoint_path.with_suffix(".tmp")
    torch.save({"settings": asdict(settings), key: network.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "seconds": seconds, "history": history}, partial)
    partial.replace(checkpoint_path)
    (checkpoint_path.parent / "history.jsonl").write_text("".join(json.dumps(item) + "\n" for item in history))
