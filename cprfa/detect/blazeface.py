"""MediaPipe's short-range BlazeFace face detector in torch: the network, its SSD anchors, box decoding and
weighted non-maximum suppression, exactly as MediaPipe runs them (``face_detection_short_range.tflite`` and
the options of its graph ``face_detection_short_range.pbtxt``).

The network (BlazeFace, Bazarevsky et al. 2019, "BlazeFace: Sub-millisecond Neural Face Detection on Mobile
GPUs") takes a 128 × 128 RGB image scaled to [-1, 1] and gives, for each of 896 anchors, 16 regression values
and one score logit. Its layers, from the converted TFLite graph:

- stem: 5 × 5 convolution, stride 2, 3 → 24 channels, TFLite 'SAME' padding (1 before, 2 after), ReLU;
- 16 BlazeBlocks: 3 × 3 depthwise convolution ('SAME': 1 on each side at stride 1; 0 before and 1 after at
  stride 2) → 1 × 1 convolution, added to the shortcut (the input, 2 × 2 max-pooled at stride 2, zero-padded
  with extra channels at the end when the block widens), then ReLU. Widths 24, 28, 32, 36, 42, 48, 56, 64, 72,
  80, 88, 96, 96, 96, 96, 96 with stride 2 at blocks 3, 6 and 12;
- heads: 1 × 1 convolutions on the 16 × 16 × 88 map (2 anchors per cell) and the 8 × 8 × 96 map (6 anchors per
  cell); outputs in TFLite's NHWC order, so anchor index = (row · width + column) · anchors per cell + k.

Anchors (MediaPipe SsdAnchorsCalculator with the short-range options: 4 layers of strides 8, 16, 16, 16,
aspect ratio 1 plus the interpolated scale, offset 0.5, fixed anchor size): centres ((column + 0.5) / n,
(row + 0.5) / n) of each n × n feature map, width and height 1; consecutive layers of one stride share a map,
so 16 · 16 · 2 + 8 · 8 · 6 = 896. Decoding (TensorsToDetectionsCalculator, reverse_output_order, x/y/w/h
scale 128): centre = anchor + value[0:2] / 128, size = value[2:4] / 128, keypoint k = anchor + value[4+2k :
6+2k] / 128, all relative to the input; score = sigmoid(clip(logit, -100, 100)). The six keypoints are the
subject's right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cprfa._checks import check_shape
from cprfa.errors import InvalidInputError

INPUT_SIZE = 128
N_ANCHORS = 896
N_KEYPOINTS = 6
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")
BLOCK_WIDTHS = (24, 28, 32, 36, 42, 48, 56, 64, 72, 80, 88, 96, 96, 96, 96, 96)
BLOCK_STRIDE_2 = (2, 5, 11)  # blocks (counted from 0) that halve the resolution
ANCHOR_STRIDES = (8, 16, 16, 16)
ANCHOR_MIN_SCALE, ANCHOR_MAX_SCALE = 0.1484375, 0.75  # SsdAnchorsCalculator's min_scale and max_scale
SCALE = 128.0  # x_scale = y_scale = w_scale = h_scale of MediaPipe's decoder
SCORE_CLIP = 100.0
IOU_THRESHOLD = 0.3


class BlazeBlock(nn.Module):
    """Depthwise 3 × 3 → pointwise 1 × 1, plus the (pooled, channel-padded) shortcut, then ReLU."""

    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.stride = stride
        self.depthwise = nn.Conv2d(channels_in, channels_in, 3, stride, padding=1 if stride == 1 else 0,
                                   groups=channels_in)
        self.pointwise = nn.Conv2d(channels_in, channels_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            branch = self.depthwise(F.pad(x, (0, 1, 0, 1)))  # TFLite 'SAME' at stride 2 on an even size
            shortcut = F.max_pool2d(x, 2)
        else:
            branch, shortcut = self.depthwise(x), x
        out = pointwise(self.pointwise, branch)
        out[:, :shortcut.shape[1]] += shortcut  # the shortcut, zero-padded with the extra channels at the end
        return out.relu_()


class BlazeFace(nn.Module):
    """forward(images) -> (regressors, logits), the raw outputs of MediaPipe's short-range model.

    Shape: images (B, 3, 128, 128) float RGB in [-1, 1] -> regressors (B, 896, 16), logits (B, 896)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, BLOCK_WIDTHS[0], 5, 2)
        widths_in = (BLOCK_WIDTHS[0],) + BLOCK_WIDTHS[:-1]
        self.blocks = nn.ModuleList(BlazeBlock(c_in, c_out, 2 if k in BLOCK_STRIDE_2 else 1)
                                    for k, (c_in, c_out) in enumerate(zip(widths_in, BLOCK_WIDTHS, strict=True)))
        self.classifier_8 = nn.Conv2d(88, 2, 1)
        self.regressor_8 = nn.Conv2d(88, 32, 1)
        self.classifier_16 = nn.Conv2d(96, 6, 1)
        self.regressor_16 = nn.Conv2d(96, 96, 1)
        self.to(memory_format=torch.channels_last)  # several times faster depthwise convolutions and pooling

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_shape("images", images, (None, 3, INPUT_SIZE, INPUT_SIZE))
        x = F.pad(images, (1, 2, 1, 2)).contiguous(memory_format=torch.channels_last)  # TFLite 'SAME', 5 × 5 / 2
        x = self.stem(x).relu_()
        for block in self.blocks[:11]:
            x = block(x)
        map_8 = x  # (B, 88, 16, 16)
        for block in self.blocks[11:]:
            x = block(x)
        batch = len(images)
        regressors = torch.cat([_anchors_last(pointwise(self.regressor_8, map_8), batch, 16),
                                _anchors_last(pointwise(self.regressor_16, x), batch, 16)], dim=1)
        logits = torch.cat([_anchors_last(pointwise(self.classifier_8, map_8), batch, 1),
                            _anchors_last(pointwise(self.classifier_16, x), batch, 1)], dim=1)
        return regressors, logits[..., 0]


def pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 1 × 1 convolution as one matrix product over the pixels of a channels-last map (torch's own 1 × 1
    convolution copies channels-last maps to and fro). Shape: (B, C, H, W) -> (B, O, H, W), channels last."""
    batch, channels, height, width = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(-1, channels)
    out = torch.addmm(conv.bias, rows, conv.weight.reshape(conv.out_channels, channels).t())
    return out.view(batch, height, width, conv.out_channels).permute(0, 3, 1, 2)


def _anchors_last(x: torch.Tensor, batch: int, values: int) -> torch.Tensor:
    """(B, A·V, H, W) -> (B, H·W·A, V) in TFLite's NHWC order."""
    return x.permute(0, 2, 3, 1).reshape(batch, -1, values)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB images to the network's input, as MediaPipe's ImageToTensorCalculator makes it.

    Shape: (B, 128, 128, 3) uint8 -> (B, 3, 128, 128) float32 in [-1, 1]."""
    check_shape("images", images, (None, INPUT_SIZE, INPUT_SIZE, 3))
    if images.dtype != torch.uint8:
        raise InvalidInputError(f"images must be uint8, got {images.dtype}")
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def anchor_centres(input_size: int = INPUT_SIZE, strides: tuple[int, ...] = ANCHOR_STRIDES) -> torch.Tensor:
    """The SSD anchor centres (x, y) relative to the input, in the order of the network's outputs: per feature
    map, row by row, column by column, then the anchors of a cell. Anchors have width and height 1.

    Consecutive layers of one stride share a feature map; each layer gives two anchors per cell (aspect ratio
    1 and the interpolated scale). Shape: -> (N, 2); N = 896 for the defaults."""
    centres, layer = [], 0
    while layer < len(strides):
        stride, shared = strides[layer], 0
        while layer + shared < len(strides) and strides[layer + shared] == stride:
            shared += 1
        size = math.ceil(input_size / stride)
        steps = (torch.arange(size, dtype=torch.float32) + 0.5) / size
        ys, xs = torch.meshgrid(steps, steps, indexing="ij")
        grid = torch.stack([xs, ys], dim=-1).reshape(-1, 1, 2)
        centres.append(grid.expand(-1, 2 * shared, 2).reshape(-1, 2))
        layer += shared
    return torch.cat(centres)


def anchor_scales(strides: tuple[int, ...] = ANCHOR_STRIDES) -> torch.Tensor:
    """The nominal side of each anchor, relative to the input, in the order of ``anchor_centres``: MediaPipe
    decodes with a fixed size of 1, but its SsdAnchorsCalculator gives layer i the scale s_i = min + (max − min) ·
    i / (L − 1) (s_L = 1) for its aspect-ratio-1 anchor and sqrt(s_i · s_{i+1}) for the interpolated one. The
    trained network follows them: a face's best scores come from the anchors of about its size, which is what
    ``cprfa train detector`` matches faces to. Shape: -> (N,); N = 896 for the defaults."""
    layers = len(strides)
    scale = [ANCHOR_MIN_SCALE + (ANCHOR_MAX_SCALE - ANCHOR_MIN_SCALE) * i / (layers - 1) for i in range(layers)]
    scale.append(1.0)
    sizes, layer = [], 0
    while layer < layers:
        stride, shared = strides[layer], 0
        while layer + shared < layers and strides[layer + shared] == stride:
            shared += 1
        cell = [value for i in range(layer, layer + shared) for value in (scale[i], math.sqrt(scale[i] * scale[i + 1]))]
        cells = math.ceil(INPUT_SIZE / stride) ** 2
        sizes.append(torch.tensor(cell).repeat(cells))
        layer += shared
    return torch.cat(sizes)


def decode(regressors: torch.Tensor, logits: torch.Tensor,
           anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes, keypoints and scores from the raw outputs, relative to the input (0 to 1 across it).

    Shape: regressors (B, N, 16), logits (B, N), anchors (N, 2) -> boxes (B, N, 4) as (x0, y0, x1, y1),
    keypoints (B, N, 6, 2) as (x, y), scores (B, N) in (0, 1)."""
    check_shape("regressors", regressors, (None, "N", 4 + 2 * N_KEYPOINTS))
    check_shape("logits", logits, (regressors.shape[0], "N"))
    check_shape("anchors", anchors, (regressors.shape[1], 2))
    values = regressors / SCALE
    centre = anchors + values[..., 0:2]
    half = values[..., 2:4] / 2
    boxes = torch.cat([centre - half, centre + half], dim=-1)
    keypoints = anchors[:, None, :] + values[..., 4:].reshape(*values.shape[:2], N_KEYPOINTS, 2)
    scores = torch.sigmoid(logits.clamp(-SCORE_CLIP, SCORE_CLIP))
    return boxes, keypoints, scores


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every pair; 0 where boxes do not overlap or have no area.

    Shape: a (N, 4), b (M, 4) as (x0, y0, x1, y1) -> (N, M)."""
    check_shape("a", a, (None, 4))
    check_shape("b", b, (None, 4))
    low = torch.maximum(a[:, None, :2], b[None, :, :2])
    high = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = (high - low).clamp(min=0).prod(dim=-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union))


def weighted_nms(boxes: torch.Tensor, scores: torch.Tensor, keypoints: torch.Tensor,
                 iou_threshold: float = IOU_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MediaPipe's "WEIGHTED" non-maximum suppression: take the best remaining detection, gather every
    remaining one whose IoU with it exceeds ``iou_threshold`` (itself included), replace it by the
    score-weighted mean of their boxes and keypoints (keeping its own score), drop them all; repeat.
    Results come best first.

    Shape: boxes (N, 4), scores (N,), keypoints (N, K, 2) -> boxes (M, 4), scores (M,), keypoints (M, K, 2)."""
    check_shape("boxes", boxes, ("N", 4))
    check_shape("scores", scores, ("N",))
    check_shape("keypoints", keypoints, ("N", None, 2))
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    overlaps = box_iou(boxes, boxes) > iou_threshold
    remaining = torch.ones(len(boxes), dtype=torch.bool)
    kept_boxes, kept_scores, kept_keypoints = [], [], []
    for i in range(len(boxes)):
        if not remaining[i]:
            continue
        members = remaining & overlaps[i]
        members[i] = True
        weights = scores[members]
        total = weights.sum()
        kept_boxes.append((weights[:, None] * boxes[members]).sum(dim=0) / total)
        kept_keypoints.append((weights[:, None, None] * keypoints[members]).sum(dim=0) / total)
        kept_scores.append(scores[i])
        remaining &= ~members
    if not kept_boxes:
        return boxes[:0], scores[:0], keypoints[:0]
    return torch.stack(kept_boxes), torch.stack(kept_scores), torch.stack(kept_keypoints)
