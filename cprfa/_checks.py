"""One helper to check tensor shapes at run time, so every function reports bad input the same way."""

from __future__ import annotations

import torch

from cprfa.errors import InvalidInputError


def check_shape(name: str, tensor: torch.Tensor, shape: tuple[int | str | None, ...]) -> None:
    """Raise InvalidInputError unless ``tensor`` matches ``shape``.

    ``shape`` entries are ints (exact size), None (any size) or names (any size, but equal wherever the same
    name appears in this call). A leading ``...`` is not supported: spell the batch axis out.
    """
    if not isinstance(tensor, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor or numpy array, got {type(tensor).__name__}")
    if tensor.dim() != len(shape):
        raise InvalidInputError(f"{name} must have shape {_fmt(shape)}, got {tuple(tensor.shape)}")
    sizes: dict[str, int] = {}
    for axis, (want, got) in enumerate(zip(shape, tensor.shape)):
        if isinstance(want, int) and want != got:
            raise InvalidInputError(f"{name} must have shape {_fmt(shape)}, got {tuple(tensor.shape)}")
        if isinstance(want, str) and sizes.setdefault(want, got) != got:
            raise InvalidInputError(
                f"{name} must have shape {_fmt(shape)} (axis {axis} is '{want}'), got {tuple(tensor.shape)}"
            )


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise InvalidInputError if ``tensor`` holds NaN or infinity."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise InvalidInputError(f"{name} contains NaN or infinite values")


def _fmt(shape: tuple[int | str | None, ...]) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"

