"""Run the HS-U-Net on face crops: ``DafiEstimator`` (weights, device, batching) and the weights file format.

Weights are a ``torch.save`` dict {format, version, config, state_dict (float16)} read with
``weights_only=True``, so a weights file can never run code. The shipped weights are
``cprfa/dafi/assets/hsunet.pt`` with ``hsunet.record.json`` beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from cprfa.dafi.network import HSUNet, HSUNetConfig, soft_argmax, to_input
from cprfa.dafi.refine import LandmarkRefiner, load_refiner
from cprfa.data.augment import FLIP_68
from cprfa.data.crop import DEFAULT_ZOOM, box_centre, check_zoom, crop_box, crop_image, turn_points, zoom_box
from cprfa.errors import InvalidInputError, ModelFileError
from cprfa.weights import read_weights

WEIGHTS_FORMAT = "cprfa-hsunet"
WEIGHTS_VERSION = 3  # 1: without the calibration offsets, 2: without the vertex offset (read as none)
DEFAULT_WEIGHTS = Path(__file__).parent / "assets" / "hsunet.pt"
BUILD_SIZE = 256  # crop side of the training data (cprfa data build's default)
MIRRORED_LANDMARKS = torch.tensor(FLIP_68)
REFINER_CHUNK = 4  # faces refined together (DafiEstimator._refined)
# foreground probability above which vertex retrieval reads a pixel's code; the less certain pixels of the face's
# rim and of occluders' edges carry its least accurate codes (README, "DAFI estimation", chosen on afw)
RETRIEVAL_CONFIDENCE = 0.8


@dataclass(frozen=True, eq=False)
class DafiPrediction:
    """For a batch of B crops of side S: dafi (B, S, S, 3) float32 codes in [0, 1], foreground (B, S, S)
    float32 probability, mask (B, S, S) bool (foreground > 0.5), landmarks (B, 68, 2) float32 crop pixels,
    landmark_foreground (B, 68) float32: the foreground probability at each landmark. The network learned to
    leave occluders out of the foreground, so a landmark where it is low is hidden and the head's point there
    a guess (the on-line fits weigh each landmark by it: cprfa.align)."""

    dafi: np.ndarray
    foreground: np.ndarray
    mask: np.ndarray
    landmarks: np.ndarray
    landmark_foreground: np.ndarray

    @property
    def confident(self) -> np.ndarray:
        """(B, S, S) bool: the pixels whose codes vertex retrieval reads (foreground > RETRIEVAL_CONFIDENCE)."""
        return self.foreground > RETRIEVAL_CONFIDENCE


def save_weights(network: HSUNet, config: HSUNetConfig, path: str | Path) -> None:
    state = {key: value.half() if value.is_floating_point() else value
             for key, value in network.state_dict().items()}
    path = Path(path)
    torch.save({"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "config": config.to_dict(),
                "state_dict": state}, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def load_network(path: str | Path | None = None) -> tuple[HSUNet, HSUNetConfig]:
    """The HS-U-Net from a weights file (default: the shipped weights), in eval mode on the CPU."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    content = read_weights(path, WEIGHTS_FORMAT, (1, 2, WEIGHTS_VERSION), "HS-U-Net")
    try:
        config = HSUNetConfig.from_dict(content["config"])
        network = HSUNet(config)
        state = {key: value.float() if value.is_floating_point() else value
                 for key, value in content["state_dict"].items()}
        state.setdefault("landmark_offset", network.landmark_offset)  # version 1: not calibrated
        state.setdefault("vertex_offset", network.vertex_offset)  # version 2: landmarks calibrated only
        network.vertex_offset = torch.zeros_like(state["vertex_offset"])  # its size is the face model's
        network.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: weights do not match the HS-U-Net ({error})") from None
    return network.eval(), config


class DafiEstimator:
    """The HS-U-Net ready to run: ``predict(crops)`` on uint8 RGB crops of the network's input size.

    ``flip``: test-time augmentation. Each crop also goes through the network mirrored, and the two
    predictions are merged:
    - foreground probabilities: averaged;
    - DAFI codes: averaged with the two foreground probabilities as weights (a mirrored code's x is 1 − x, as
      in training's flip augmentation);
    - landmarks: averaged (the mirrored ones re-indexed left to right).
    Twice the network's work for a more precise result. The landmarks are corrected by the network's
    ``landmark_offset`` of the mode; ``vertex_offset`` is that mode's for the retrieved positions.

    ``refiner`` (cprfa.dafi.refine): the head's landmarks are refined on detail crops (``detail_crop``: the
    same square at ``detail_size``), which ``predict`` then needs beside the crops; with ``flip`` the
    refinement runs on the mirrored detail crop too and the two are averaged. The refiner sees only a small
    patch around each point, which under an occluder shows the occluder, so each point takes the share
    √(foreground probability at the head's point) of its refinement step (the head's point stays where the
    network sees no face; chosen on the training photos: README, "Landmark refinement").

    ``zoom``: ``crop`` cuts the crop policy's square ``zoom`` times smaller about its centre, so that the face
    fills more of the network's input (DEFAULT_ZOOM, chosen on training faces: README, "DAFI estimation")."""

    def __init__(self, network: HSUNet | None = None, config: HSUNetConfig | None = None,
                 device: str | torch.device = "cpu", flip: bool = False, zoom: float | None = None,
                 refiner: LandmarkRefiner | None = None):
        if network is None:
            network, config = load_network()
        self.refiner = refiner.fused().to(device) if refiner is not None else None
        self.landmark_offset = network.landmark_offset.to(device)
        self.vertex_offsets = network.vertex_offset.cpu().numpy()
        self.network, self.config, self.device = network.to(device).fused(), config, torch.device(device)
        self.flip = flip
        self.zoom = check_zoom(DEFAULT_ZOOM if zoom is None else zoom)

    @classmethod
    def from_file(cls, path: str | Path | None = None, device: str | torch.device = "cpu",
                  runtime: str = "torch", flip: bool = False, zoom: float | None = None, refine: bool = True,
                  refiner_path: str | Path | None = None) -> DafiEstimator:
        """The network of a weights file (default: the shipped one) run by torch on ``device``, or by
        onnxruntime (``runtime="onnx"``, CPU; cprfa.dafi.onnx). Unless ``refine`` is False, with the landmark
        refiner of ``refiner_path`` (run the same way); without one, the shipped refiner refines the shipped
        network, which it was trained on, and another network goes unrefined."""
        if runtime not in ("torch", "onnx"):
            raise InvalidInputError(f"runtime must be 'torch' or 'onnx', got '{runtime}'")
        network, config = load_network(path)
        refiner = load_refiner(refiner_path) if refine and (refiner_path is not None or path is None) else None
        if runtime == "onnx":
            from cprfa.dafi.onnx import OnnxNetwork, OnnxRefiner

            estimator = cls(network, config, flip=flip, zoom=zoom, refiner=refiner)
            estimator.network = OnnxNetwork(network, config.input_size)
            if refiner is not None:
                estimator.refiner = OnnxRefiner(refiner, estimator.detail_size)
            return estimator
        return cls(network, config, device=device, flip=flip, zoom=zoom, refiner=refiner)

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def detail_size(self) -> int:
        """Side of the detail crops the refiner reads (0 without a refiner)."""
        return self.refiner.config.scale * self.input_size if self.refiner is not None else 0

    @property
    def vertex_offset(self) -> np.ndarray | None:
        """The calibration of the positions retrieved from this estimator's DAFIs (cprfa.dafi.network), for its
        flip mode: (N, 2) crop pixels to subtract (``VertexRetriever(offset=...)``), or None."""
        return self.vertex_offsets[int(self.flip)] if self.vertex_offsets.shape[1] else None

    def crop(self, image: np.ndarray, face_box: tuple[float, float, float, float],
             roll: float = 0.0) -> tuple[np.ndarray, tuple]:
        """The network's input for a face: the crop policy of cprfa.data.crop around a tight face box, ``zoom``
        times smaller, made the way the training data was (resampled at the build size, then area-averaged down
        to the input size). With ``roll`` (degrees) the face box is that of the face turned upright about the
        box's centre, and the crop turns with it (cprfa.data.crop). Returns the crop (S, S, 3) uint8 and the crop
        box in the image (x0, y0, x1, y1; for a turned crop, the box it covers when turned about its centre)."""
        box = zoom_box(crop_box(face_box), self.zoom)
        if roll:
            centre_x, centre_y = turn_points(np.array(box_centre(box)), box_centre(face_box), roll)
            half = (box[2] - box[0]) / 2
            box = (centre_x - half, centre_y - half, centre_x + half, centre_y + half)
        crop = crop_image(image, box, max(BUILD_SIZE, self.input_size), roll=roll)
        return cv2.resize(crop, (self.input_size,) * 2, interpolation=cv2.INTER_AREA), box

    def detail_crop(self, image: np.ndarray, box: tuple[float, float, float, float], roll: float = 0.0) -> np.ndarray:
        """The refiner's input for the crop box ``box`` and ``roll`` (from ``crop``): (R, R, 3) uint8,
        R = detail_size."""
        if self.refiner is None:
            raise InvalidInputError("this estimator has no landmark refiner, so it takes no detail crops")
        return crop_image(image, box, self.detail_size, roll=roll)

    @torch.inference_mode()
    def predict(self, crops: np.ndarray, batch_size: int = 32, detail: np.ndarray | None = None) -> DafiPrediction:
        """Shape: crops (B, S, S, 3) uint8 RGB, S = input_size; detail (B, R, R, 3) uint8 RGB, R = detail_size,
        with a refiner (``detail_crop``), else None -> DafiPrediction."""
        crops = np.asarray(crops)
        size = self.input_size
        _check_crops("crops", crops, size)
        if (detail is None) != (self.refiner is None):
            raise InvalidInputError("predict needs detail crops when the estimator has a landmark refiner, and "
                                    "only then")
        if detail is not None:
            detail = np.asarray(detail)
            _check_crops("detail", detail, self.detail_size, len(crops))
        if not len(crops):
            return DafiPrediction(np.zeros((0, size, size, 3), np.float32), np.zeros((0, size, size), np.float32),
                                  np.zeros((0, size, size), bool), np.zeros((0, 68, 2), np.float32),
                                  np.zeros((0, 68), np.float32))
        dafi, foreground, landmarks = [], [], []
        for start in range(0, len(crops), batch_size):
            batch = torch.from_numpy(crops[start:start + batch_size]).to(self.device)
            codes, probability, points = self._forward(to_input(batch))
            if detail is not None:
                refined = self._refined(to_input(torch.from_numpy(detail[start:start + batch_size]).to(self.device)),
                                        points)
                trust = sample_image(probability[:, None], points)[:, 0].clamp(0.0, 1.0).sqrt()
                points = points + trust[..., None] * (refined - points)
            dafi.append(codes.permute(0, 2, 3, 1).cpu())
            foreground.append(probability.cpu())
            landmarks.append(points.cpu())
        foreground, landmarks = torch.cat(foreground), torch.cat(landmarks)
        return DafiPrediction(torch.cat(dafi).numpy(), foreground.numpy(), foreground.numpy() > 0.5,
                              landmarks.numpy(), sample_image(foreground[:, None], landmarks)[:, 0].numpy())

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """DAFI codes, foreground probability and landmarks, merged with the mirrored crops' with ``flip``.
        Shape: (B, 3, S, S) -> (B, 3, S, S), (B, S, S), (B, 68, 2)."""
        count, size = len(images), self.input_size
        groups, heatmaps = self.network(torch.cat([images, images.flip(3)]) if self.flip else images)
        full = groups[-1].float()
        codes, probability = full[:, :3], torch.sigmoid(full[:, 3])
        points = soft_argmax(heatmaps.float(), size)
        if not self.flip:
            return codes, probability, points - self.landmark_offset[0]
        mirrored_codes = codes[count:].flip(3)
        mirrored_codes = torch.cat([1 - mirrored_codes[:, :1], mirrored_codes[:, 1:]], dim=1)
        weights = torch.stack([probability[:count], probability[count:].flip(2)])  # (2, B, S, S)
        merged = (weights[0, :, None] * codes[:count] + weights[1, :, None] * mirrored_codes) / (
            weights.sum(dim=0)[:, None].clamp(min=1e-6))
        points = (points[:count] + _mirrored(points[count:], size)) / 2
        return merged, weights.mean(dim=0), points - self.landmark_offset[1]

    def _refined(self, detail: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """The refiner's landmarks from the head's, averaged with those of the mirrored crop with ``flip``; by
        REFINER_CHUNK faces at a time (a whole batch's patches at once were slower).
        Shape: detail (B, 3, R, R), points (B, 68, 2) crop pixels at S -> (B, 68, 2) crop pixels at S."""
        scale, side = self.refiner.config.scale, self.detail_size
        refined = []
        for start in range(0, len(points), REFINER_CHUNK):
            images, starts = detail[start:start + REFINER_CHUNK], points[start:start + REFINER_CHUNK].float() * scale
            if not self.flip:
                refined.append(self.refiner(images, starts) / scale)
                continue
            both = self.refiner(torch.cat([images, images.flip(3)]), torch.cat([starts, _mirrored(starts, side)]))
            refined.append((both[:len(starts)] + _mirrored(both[len(starts):], side)) / (2 * scale))
        return torch.cat(refined)


def sample_image(images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of square images at points in pixels (origin at the top-left corner, pixel centres at
    +0.5; the border value beyond it). Shape: images (B, C, S, S), points (B, L, 2) -> (B, C, L)."""
    grid = (points.to(images.dtype) * (2 / images.shape[-1]) - 1)[:, :, None]
    return torch.nn.functional.grid_sample(images, grid, align_corners=False, padding_mode="border")[..., 0]


def _mirrored(points: torch.Tensor, size: int) -> torch.Tensor:
    """The landmarks of the mirrored crop of side ``size``, re-indexed left to right. Shape: (B, 68, 2)."""
    points = points[:, MIRRORED_LANDMARKS]
    return torch.stack([size - points[..., 0], points[..., 1]], dim=-1)


def _check_crops(name: str, crops: np.ndarray, size: int, count: int | None = None) -> None:
    if crops.ndim != 4 or crops.shape[1:] != (size, size, 3) or crops.dtype != np.uint8 or (
            count is not None and len(crops) != count):
        expected = f"({count if count is not None else 'B'}, {size}, {size}, 3) uint8 RGB"
        raise InvalidInputError(f"{name} must be {expected}, got {crops.shape} {crops.dtype}")
