"""The Heavily Supervised U-Net (paper §2.1, Fig. 2a) with a 68-landmark heatmap head.

A U-Net turns a face crop (S × S RGB) into a densely annotated facial image: per pixel a 3-channel DAFI (the
PNCC code of the face surface seen there, normalized XYZ in [0, 1]) and a foreground logit. Three groups of
outputs supervise the decoder at S/4, S/2 and S (the last is the DAFI used downstream); every group gets the
same losses (cprfa.train.dafi). Beside them a landmark head predicts 68 heatmaps at S/2 from the decoder;
their spatial soft-argmax gives the landmarks (the sparse source that CPR fusion uses) in crop pixels.

Two calibrations are measured on the training faces once training ends (cprfa.train.dafi) and saved with the
weights, without and with the test-time flip (cprfa.dafi.predict.DafiEstimator): ``landmark_offset``, the
landmark head's mean error per landmark, and ``vertex_offset``, the mean error per model vertex of the
positions retrieved from the DAFI (cprfa.dafi.retrieval); both are subtracted from what the network gives.

Choices the paper leaves open, fixed here: encoder of five levels (double 3×3 conv + batch norm + ReLU,
max-pool down), decoder with bilinear up-sampling and skip concatenation; DAFI through a sigmoid so codes
stay in [0, 1]; the input is RGB scaled to [-0.5, 0.5]. Widths and input size are configurable and saved
with the weights (``HSUNetConfig``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

N_LANDMARKS = 68


@dataclass(frozen=True)
class HSUNetConfig:
    """Input side S (divisible by 16) and the encoder widths from full resolution down to S/16."""

    input_size: int = 128
    widths: tuple[int, ...] = (8, 16, 32, 96, 192)

    def __post_init__(self) -> None:
        if len(self.widths) != 5 or min(self.widths) < 1:
            raise ValueError(f"widths must be five positive channel counts, got {self.widths}")
        if self.input_size < 32 or self.input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16 and at least 32, got {self.input_size}")

    def to_dict(self) -> dict:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, values: dict) -> HSUNetConfig:
        return cls(input_size=int(values["input_size"]), widths=tuple(int(w) for w in values["widths"]))


class _DoubleConv(nn.Sequential):
    def __init__(self, channels_in: int, channels_out: int):
        super().__init__(
            nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out),
            nn.ReLU(inplace=True),
        )


class HSUNet(nn.Module):
    """forward(images) -> (dafi groups, heatmap logits).

    Shape: images (B, 3, S, S) float in [-0.5, 0.5] -> groups: 3 tensors (B, 4, S/4, S/4), (B, 4, S/2, S/2),
    (B, 4, S, S) with channels [code x, code y, code z (sigmoid, in [0, 1]), foreground logit];
    heatmaps (B, 68, S/2, S/2) logits."""

    def __init__(self, config: HSUNetConfig = HSUNetConfig()):
        super().__init__()
        self.config = config
        w = config.widths
        self.encoder = nn.ModuleList([_DoubleConv(3, w[0])] + [_DoubleConv(w[i - 1], w[i]) for i in range(1, 5)])
        self.decoder = nn.ModuleList([_DoubleConv(w[i + 1] + w[i], w[i]) for i in reversed(range(4))])
        self.heads = nn.ModuleList([nn.Conv2d(w[i], 4, 1) for i in (2, 1, 0)])  # S/4, S/2, S
        self.landmark_head = nn.Sequential(_DoubleConv(w[1], w[1]), nn.Conv2d(w[1], N_LANDMARKS, 1))
        # crop pixels at S, [without flip, with flip]; no vertex offset (N = 0) until calibrated
        self.register_buffer("landmark_offset", torch.zeros(2, N_LANDMARKS, 2))
        self.register_buffer("vertex_offset", torch.zeros(2, 0, 2))
        self.to(memory_format=torch.channels_last)  # about 30 % faster with oneDNN on the CPU

    def fused(self) -> HSUNet:
        """A copy for inference that computes the same with each batch norm folded into its convolution (about
        6 % less time for one face on the CPU)."""
        fused = copy.deepcopy(self).eval()
        for block in fused.modules():
            if isinstance(block, _DoubleConv):
                for index in (0, 3):
                    block[index], block[index + 1] = fuse_conv_bn_eval(block[index], block[index + 1]), nn.Identity()
        return fused.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips, x = [], images
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        groups, heatmaps = [], None
        for step, block in enumerate(self.decoder):  # S/8, S/4, S/2, S
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skips.pop()], dim=1))
            if step >= 1:
                out = self.heads[step - 1](x)
                groups.append(torch.cat([torch.sigmoid(out[:, :3]), out[:, 3:]], dim=1))
            if step == 2:
                heatmaps = self.landmark_head(x)
        return groups, heatmaps


def widened(network: HSUNet, config: HSUNetConfig) -> HSUNet:
    """A network of ``config`` (the same input size, no width smaller) that computes what ``network`` computes:
    every weight of ``network`` in the leading channels, the new channels freshly initialized, and the weights
    from new channels into old ones zero, so that training goes on from the smaller network's function with more
    capacity (the widening of Net2Net, Chen et al. 2016, with zeros instead of copies).

    The decoder's convolutions read [up-sampled deeper features, skip]; each part keeps its place in the wider
    concatenation."""
    old, new = network.config.widths, config.widths
    if config.input_size != network.config.input_size or any(n < o for n, o in zip(new, old, strict=True)):
        raise ValueError(f"cannot widen an HS-U-Net of {network.config} to {config}")
    grown = HSUNet(config)
    state = grown.state_dict()
    inputs = {"encoder.0.0": [np.arange(3)]}  # where the old input channels sit among the new, per convolution
    for level in range(1, 5):
        inputs[f"encoder.{level}.0"] = [np.arange(old[level - 1])]
    for step, level in enumerate(reversed(range(4))):
        inputs[f"decoder.{step}.0"] = [np.arange(old[level + 1]), new[level + 1] + np.arange(old[level])]
    for key, value in network.state_dict().items():
        if key.endswith("_offset"):  # the calibration: measured anew when training ends
            continue
        target = state[key]
        if value.dim() == 0:
            target.copy_(value)
            continue
        if value.dim() == 4:
            prefix = key.rsplit(".", 1)[0]
            columns = np.concatenate(inputs.get(prefix, [np.arange(value.shape[1])]))
            block = target[:len(value)]  # the old output channels read nothing from the new input channels
            block[:, torch.from_numpy(np.setdiff1d(np.arange(target.shape[1]), columns))] = 0.0
            block[:, torch.from_numpy(columns)] = value
        else:
            target[:len(value)] = value
    grown.load_state_dict(state)
    return grown


def soft_argmax(heatmaps: torch.Tensor, image_size: int) -> torch.Tensor:
    """Expected position under the spatial softmax of each heatmap, in crop pixels of an image of side
    ``image_size`` (u right, v down, origin at the top-left pixel corner).

    Shape: heatmaps (B, K, H, W) -> (B, K, 2)."""
    batch, count, height, width = heatmaps.shape
    probability = heatmaps.flatten(2).softmax(dim=-1).reshape(batch, count, height, width)
    u = (torch.arange(width, dtype=heatmaps.dtype, device=heatmaps.device) + 0.5) * (image_size / width)
    v = (torch.arange(height, dtype=heatmaps.dtype, device=heatmaps.device) + 0.5) * (image_size / height)
    return torch.stack([(probability.sum(dim=2) * u).sum(-1), (probability.sum(dim=3) * v).sum(-1)], dim=-1)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB crops to the network's input. Shape: (B, S, S, 3) uint8 -> (B, 3, S, S) float32."""
    return (images.permute(0, 3, 1, 2).float() / 255.0 - 0.5).contiguous(memory_format=torch.channels_last)
