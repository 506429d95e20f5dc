"""Landmark refinement: a second look at each of the landmark head's 68 points at twice its resolution.

The HS-U-Net reads a 128² crop and its landmark head stops at about 2.6 % NME however long it trains (README,
"DAFI estimation"). The refiner cuts, around each of the head's points, small patches of the same crop at
``scale`` times the network's resolution (one patch per pitch: ``patch_size``² pixels spaced ``pitch`` detail
pixels apart, so the first sees fine detail and the last the surroundings), and a small CNN shared by all the
points, with an output layer of its own per landmark, predicts where the point is from there. With the
test-time flip the refinement also runs on the mirrored crop and the two are averaged, as the head's points
are (cprfa.dafi.predict.DafiEstimator).

It is trained on the head's own points on augmented training faces (``cprfa train refiner``, cprfa.train.refine),
so it learns to correct the errors that head makes; weights in ``cprfa/dafi/assets/refiner.pt``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from cprfa.dafi.network import N_LANDMARKS
from cprfa.errors import ModelFileError
from cprfa.weights import read_weights

WEIGHTS_FORMAT = "cprfa-refiner"
WEIGHTS_VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).parent / "assets" / "refiner.pt"
OFFSET_UNIT = 4.0  # detail pixels per unit of the output layer, so that the outputs start near 1


@dataclass(frozen=True)
class RefinerConfig:
    """Patch side (divisible by 8), patch pitches in detail pixels, the detail crop's side as a multiple of the
    HS-U-Net's input side, the CNN's widths and its hidden layer."""

    patch_size: int = 24
    pitches: tuple[float, ...] = (1.0, 3.0)
    scale: int = 2
    widths: tuple[int, ...] = (24, 32, 64, 96)
    hidden: int = 128

    def __post_init__(self) -> None:
        if self.patch_size < 8 or self.patch_size % 8:
            raise ValueError(f"patch_size must be a positive multiple of 8, got {self.patch_size}")
        if not self.pitches or min(self.pitches) <= 0 or self.scale < 1:
            raise ValueError(f"pitches must be positive and scale at least 1, got {self.pitches}, {self.scale}")
        if len(self.widths) != 4 or min(self.widths) < 1 or self.hidden < 1:
            raise ValueError(f"widths must be four positive channel counts, got {self.widths}")

    def to_dict(self) -> dict:
        return {**asdict(self), "pitches": list(self.pitches), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, values: dict) -> RefinerConfig:
        return cls(int(values["patch_size"]), tuple(float(p) for p in values["pitches"]), int(values["scale"]),
                   tuple(int(w) for w in values["widths"]), int(values["hidden"]))


def sample_patches(images: torch.Tensor, points: torch.Tensor, patch_size: int,
                   pitches: tuple[float, ...]) -> torch.Tensor:
    """Bilinear patches centred on each point, one per pitch, zero outside the image.

    Shape: images (B, C, H, W), points (B, K, 2) pixels (u right, v down, pixel corners)
    -> (B, K, C · len(pitches), P, P)."""
    batch, channels, height, width = images.shape
    count = points.shape[1]
    steps = torch.arange(patch_size, dtype=images.dtype, device=images.device) - (patch_size - 1) / 2
    patches = []
    for pitch in pitches:
        offsets = torch.stack(torch.meshgrid(steps, steps, indexing="xy"), dim=-1) * pitch  # (P, P, 2) [u, v]
        u, v = (points[:, :, None, None] + offsets).unbind(dim=-1)  # (B, K, P, P) each
        grid = torch.stack([u * (2 / width) - 1, v * (2 / height) - 1], dim=-1)
        sampled = F.grid_sample(images, grid.reshape(batch, count * patch_size, patch_size, 2),
                                mode="bilinear", padding_mode="zeros", align_corners=False)
        patches.append(sampled.reshape(batch, channels, count, patch_size, patch_size).transpose(1, 2))
    return torch.cat(patches, dim=2)


def _block(channels_in: int, channels_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True))


class LandmarkRefiner(nn.Module):
    """forward(images, points) -> refined points.

    Shape: images (B, 3, R, R) float in [-0.5, 0.5] (the detail crop, R = scale · S), points (B, 68, 2)
    detail pixels -> (B, 68, 2) detail pixels."""

    def __init__(self, config: RefinerConfig = RefinerConfig()):
        super().__init__()
        self.config = config
        w = config.widths
        self.features = nn.Sequential(_block(3 * len(config.pitches), w[0], 1), _block(w[0], w[1], 2),
                                      _block(w[1], w[2], 2), _block(w[2], w[3], 2), nn.Flatten(),
                                      nn.Linear(w[3] * (config.patch_size // 8) ** 2, config.hidden),
                                      nn.ReLU(inplace=True))
        self.output_weight = nn.Parameter(torch.zeros(N_LANDMARKS, config.hidden, 2))  # one layer per landmark
        self.output_bias = nn.Parameter(torch.zeros(N_LANDMARKS, 2))
        self.to(memory_format=torch.channels_last)  # faster convolutions with oneDNN on the CPU

    def fused(self) -> LandmarkRefiner:
        """A copy for inference that computes the same with each batch norm folded into its convolution (the
        batch norms took a fifth of the time)."""
        fused = copy.deepcopy(self).eval()
        for block in fused.features[:4]:
            block[0], block[1] = fuse_conv_bn_eval(block[0], block[1]), nn.Identity()
        return fused.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        patches = sample_patches(images, points, self.config.patch_size, self.config.pitches)
        patches = patches.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        features = self.features(patches).reshape(*points.shape[:2], -1)
        offsets = torch.einsum("bkc,kcd->bkd", features, self.output_weight) + self.output_bias
        return points + OFFSET_UNIT * offsets


def save_refiner(refiner: LandmarkRefiner, path: str | Path) -> None:
    state = {key: value.half() if value.is_floating_point() else value
             for key, value in refiner.state_dict().items()}
    path = Path(path)
    torch.save({"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "config": refiner.config.to_dict(),
                "state_dict": state}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def load_refiner(path: str | Path | None = None) -> LandmarkRefiner:
    """The refiner of a weights file (default: the shipped one), in eval mode on the CPU."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    content = read_weights(path, WEIGHTS_FORMAT, WEIGHTS_VERSION, "landmark refiner")
    try:
        refiner = LandmarkRefiner(RefinerConfig.from_dict(content["config"]))
        refiner.load_state_dict({key: value.float() if value.is_floating_point() else value
                                 for key, value in content["state_dict"].items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: weights do not match the landmark refiner ({error})") from None
    return refiner.eval()
