"""Training-time augmentation of one pseudo-GT face: geometry, horizontal flip, photometry, synthetic occluders.

Pure numpy / OpenCV and deterministic given the ``np.random.Generator``. Pipeline of ``augment`` (each stage
drawn with its probability in ``AugmentConfig``):

1. geometric: one similarity (scale, in-plane rotation, shift) about the crop centre, applied with a single
   ``cv2.warpAffine`` matrix to the image (bilinear), the PNCC and the mask (nearest: codes are never blended
   across the face edge) and to the landmarks. The matrix is written in cprfa coordinates (origin at the
   top-left pixel corner, pixel centres at +0.5) and converted once for OpenCV (centres at integers).
   Landmarks may leave the crop; they are kept as they are.
2. horizontal flip: image, mask and PNCC mirrored; the PNCC x code becomes ``1 − c_x`` (valid because the
   face model is left-right symmetric, so the code of the mirrored surface point is the mirrored code);
   landmarks ``u ↦ S − u`` and re-indexed with ``FLIP_68``.
3. synthetic occluders on the face (polygons, ellipses, patches of ``occluder_source``); the occluded pixels
   leave the ground truth (mask False, PNCC 0). Landmarks are kept: they are where the face is, seen or not.
4. photometric jitter of the image only (after the occluders, so occluders share the photo's look).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

import cv2
import numpy as np

from cprfa.errors import InvalidInputError

PNCC_SCALE = 65535  # the shards' uint16 PNCC is the code × PNCC_SCALE (cprfa.data.build)


def _mirror_pairs() -> np.ndarray:
    pairs = [(i, 16 - i) for i in range(8)]  # jaw; 8 (chin) fixed
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils; 27–30 (bridge) and 33 (tip) fixed
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips; 51, 57 fixed
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips; 62, 66 fixed
    permutation = np.arange(68)
    for a, b in pairs:
        permutation[a], permutation[b] = b, a
    permutation.setflags(write=False)
    return permutation


FLIP_68 = _mirror_pairs()
"""(68,) the Multi-PIE / 300-W left-right permutation: point i of a mirrored face is point FLIP_68[i] mirrored."""


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (``p_*``) and ranges (low, high) of ``augment``; the defaults are the training recipe.

    Geometry: scale 0.85–1.15, rotation ±20° (positive = counter-clockwise on screen), shift ±8 % of S per axis.
    Flip p = 0.5. Occluders p = 0.4 covering 10–40 % of the face mask. Colour (p = 0.8): brightness ×0.75–1.25,
    contrast ×0.75–1.25, saturation ×0.7–1.3, gamma 0.7–1.4. Blur p = 0.2 (σ 0.5–1.5 px), Gaussian noise
    p = 0.2 (σ 2–10 grey levels), JPEG p = 0.2 (quality 30–90), grayscale p = 0.1."""

    p_geometric: float = 1.0
    scale: tuple[float, float] = (0.85, 1.15)
    max_rotation_deg: float = 20.0
    max_shift: float = 0.08
    p_flip: float = 0.5
    p_occlude: float = 0.4
    occlusion_fraction: tuple[float, float] = (0.1, 0.4)
    p_color: float = 0.8
    brightness: tuple[float, float] = (0.75, 1.25)
    contrast: tuple[float, float] = (0.75, 1.25)
    saturation: tuple[float, float] = (0.7, 1.3)
    gamma: tuple[float, float] = (0.7, 1.4)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    p_noise: float = 0.2
    noise_std: tuple[float, float] = (2.0, 10.0)
    p_jpeg: float = 0.2
    jpeg_quality: tuple[int, int] = (30, 90)
    p_gray: float = 0.1

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise InvalidInputError(f"AugmentConfig.{name} must be a probability in [0, 1], got {value}")
            if isinstance(value, tuple) and (len(value) != 2 or not value[0] <= value[1]):
                raise InvalidInputError(f"AugmentConfig.{name} must be a range (low, high), got {value}")
        low, high = self.occlusion_fraction
        if not 0.0 <= low <= high <= 1.0:
            raise InvalidInputError(f"AugmentConfig.occlusion_fraction must lie in [0, 1], got {(low, high)}")
        if min(self.scale) <= 0 or self.max_rotation_deg < 0 or self.max_shift < 0:
            raise InvalidInputError("AugmentConfig: scale must be > 0, max_rotation_deg and max_shift >= 0")

    @classmethod
    def off(cls, **changes) -> AugmentConfig:
        """Everything switched off (identity), with ``changes`` on top."""
        names = ("p_geometric", "p_flip", "p_occlude", "p_color", "p_blur", "p_noise", "p_jpeg", "p_gray")
        return cls(**{**dict.fromkeys(names, 0.0), **changes})


@dataclass(frozen=True, eq=False)
class Sample:
    """One training face of side S: image (S, S, 3) uint8 RGB, pncc (S, S, 3) float32 in [0, 1] (0 on the
    background), mask (S, S) bool, landmarks (68, 2) float32 crop pixels (u right, v down, pixel corners)."""

    image: np.ndarray
    pncc: np.ndarray
    mask: np.ndarray
    landmarks: np.ndarray

    def __post_init__(self) -> None:
        size = _check_image("image", self.image)
        _check_array("pncc", self.pncc, (size, size, 3), np.float32)
        if not (np.isfinite(self.pncc).all() and self.pncc.min(initial=0) >= 0 and self.pncc.max(initial=0) <= 1):
            raise InvalidInputError("pncc must hold finite codes in [0, 1]")
        _check_array("mask", self.mask, (size, size), np.bool_)
        if not isinstance(self.landmarks, np.ndarray) or self.landmarks.shape != (68, 2):
            raise InvalidInputError(f"landmarks must be a (68, 2) array, got {_describe(self.landmarks)}")
        if not np.issubdtype(self.landmarks.dtype, np.floating) or not np.isfinite(self.landmarks).all():
            raise InvalidInputError("landmarks must be finite floating-point values")
        object.__setattr__(self, "landmarks", self.landmarks.astype(np.float32))

    @property
    def size(self) -> int:
        return self.image.shape[0]

    @classmethod
    def from_shard(cls, shard: Mapping, index: int) -> Sample:
        """Face ``index`` of a loaded pseudo-GT shard (cprfa.data.build), PNCC back to float in [0, 1]."""
        return cls(image=np.asarray(shard["images"][index]),
                   pncc=(np.asarray(shard["pncc"][index]) / PNCC_SCALE).astype(np.float32),
                   mask=np.asarray(shard["mask"][index]), landmarks=np.asarray(shard["landmarks"][index]))


def augment(sample: Sample, rng: np.random.Generator, config: AugmentConfig = AugmentConfig(),
            occluder_source: np.ndarray | None = None) -> Sample:
    """A randomly augmented copy of ``sample`` (see the module docstring); ``occluder_source`` is an optional
    (H, W, 3) uint8 RGB image from which rectangular occluder patches are cut."""
    if not isinstance(sample, Sample):
        raise InvalidInputError(f"sample must be a cprfa.data.augment.Sample, got {type(sample).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise InvalidInputError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if occluder_source is not None:
        _check_image("occluder_source", occluder_source, square=False)
    size = sample.size
    if rng.random() < config.p_geometric:
        angle = rng.uniform(-config.max_rotation_deg, config.max_rotation_deg)
        shift = rng.uniform(-config.max_shift, config.max_shift, 2) * size
        sample = warp_sample(sample, affine_matrix(size, rng.uniform(*config.scale), angle, shift))
    if rng.random() < config.p_flip:
        sample = flip_sample(sample)
    if rng.random() < config.p_occlude and sample.mask.any():
        image, occluded = occlude(sample.image, sample.mask, rng, config.occlusion_fraction, occluder_source)
        pncc = sample.pncc.copy()
        pncc[occluded] = 0
        sample = replace(sample, image=image, pncc=pncc, mask=sample.mask & ~occluded)
    return replace(sample, image=photometric(sample.image, rng, config))


# --- geometry --------------------------------------------------------------------------------------------


def affine_matrix(size: int, scale: float, angle_deg: float, shift=(0.0, 0.0)) -> np.ndarray:
    """(2, 3) float64 map of cprfa points ``p ↦ A p + b``: scale and rotate (counter-clockwise on screen for
    positive angles) about the crop centre (S/2, S/2), then shift by ``shift`` pixels (u, v)."""
    angle = np.deg2rad(angle_deg)
    cos, sin = np.cos(angle), np.sin(angle)
    linear = scale * np.array([[cos, sin], [-sin, cos]])  # v points down, so this turns counter-clockwise
    centre = np.array([size / 2, size / 2])
    return np.hstack([linear, (centre - linear @ centre + np.asarray(shift, float))[:, None]])


def warp_sample(sample: Sample, matrix: np.ndarray) -> Sample:
    """``sample`` moved by the (2, 3) cprfa-coordinate affine ``matrix`` (see ``affine_matrix``)."""
    matrix = np.asarray(matrix, np.float64)
    if matrix.shape != (2, 3) or not np.isfinite(matrix).all():
        raise InvalidInputError(f"matrix must be a finite (2, 3) affine map, got {_describe(matrix)}")
    linear, offset = matrix[:, :2], matrix[:, 2]
    # cprfa p = OpenCV q + 0.5:  q' = A q + (A·0.5 + b − 0.5).
    cv_matrix = np.hstack([linear, (offset + linear @ [0.5, 0.5] - 0.5)[:, None]])
    size = (sample.size, sample.size)

    def warp(array: np.ndarray, interpolation: int) -> np.ndarray:
        return cv2.warpAffine(array, cv_matrix, size, flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)

    mask = warp(sample.mask.astype(np.uint8), cv2.INTER_NEAREST).astype(bool)
    pncc = warp(sample.pncc, cv2.INTER_NEAREST)
    pncc[~mask] = 0
    landmarks = sample.landmarks.astype(np.float64) @ linear.T + offset
    return Sample(image=warp(sample.image, cv2.INTER_LINEAR), pncc=pncc, mask=mask,
                  landmarks=landmarks.astype(np.float32))


def flip_landmarks(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Landmarks of the horizontally mirrored crop of side ``size``: ``u ↦ S − u``, re-indexed with FLIP_68.

    Shape: (..., 68, 2) -> same."""
    landmarks = np.asarray(landmarks)
    if landmarks.ndim < 2 or landmarks.shape[-2:] != (68, 2):
        raise InvalidInputError(f"landmarks must have shape (..., 68, 2), got {landmarks.shape}")
    flipped = landmarks[..., FLIP_68, :].copy()
    flipped[..., 0] = size - flipped[..., 0]
    return flipped


def flip_sample(sample: Sample) -> Sample:
    """The horizontally mirrored sample; the PNCC x code becomes 1 − c_x on the face (symmetric model)."""
    pncc = sample.pncc[:, ::-1].copy()
    mask = sample.mask[:, ::-1].copy()
    pncc[..., 0] = np.where(mask, 1 - pncc[..., 0], 0)
    return Sample(image=sample.image[:, ::-1].copy(), pncc=pncc, mask=mask,
                  landmarks=flip_landmarks(sample.landmarks, sample.size))


# --- photometry ------------------------------------------------------------------------------------------


def photometric(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Colour jitter, gamma, blur, noise, JPEG and grayscale on an (H, W, 3) uint8 RGB image."""
    _check_image("image", image, square=False)
    out = image.astype(np.float32)
    if rng.random() < config.p_color:
        out *= rng.uniform(*config.brightness)
        gray = out @ np.float32([0.299, 0.587, 0.114])
        out = (out - gray.mean()) * rng.uniform(*config.contrast) + gray.mean()
        gray = (out @ np.float32([0.299, 0.587, 0.114]))[..., None]
        out = gray + (out - gray) * rng.uniform(*config.saturation)
        out = 255 * (np.clip(out, 0, 255) / 255) ** rng.uniform(*config.gamma)
    if rng.random() < config.p_blur:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(*config.blur_sigma))
    if rng.random() < config.p_noise:
        out = out + rng.normal(0.0, rng.uniform(*config.noise_std), out.shape).astype(np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if rng.random() < config.p_jpeg:
        quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        ok, data = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        out = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1] if ok else out
    if rng.random() < config.p_gray:
        out = np.repeat(cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    return np.ascontiguousarray(out)


# --- occluders -------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Occlusion:
    """What ``occlude`` returns. Unpacks as ``image, occluded = occlude(...)``; ``coverage`` is the fraction
    of the face mask's pixels that are occluded."""

    image: np.ndarray
    occluded: np.ndarray
    coverage: float

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.image, self.occluded))


_MAX_SHAPES = 12
_OVERSHOOT = 0.05  # a shape may overshoot the drawn target by at most this fraction of the face


def occlude(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, fraction_range=(0.1, 0.4),
            source: np.ndarray | None = None) -> Occlusion:
    """Paint synthetic occluders over the face so that they cover a fraction of ``mask`` drawn uniformly from
    ``fraction_range``: the result lies within that range (up to one pixel of rounding) and within 5 % of the
    face above the drawn fraction.

    Occluders are polygons and ellipses filled with a random colour or random noise texture, and (with a
    ``source`` (H, W, 3) uint8 RGB image) rectangles cut from ``source``. They are added until the target is
    reached; one that would overshoot the range is shrunk, and a short fall is made up by growing the
    occlusion into the nearest face pixels (painted with the last fill).
    Shape: image (S, S, 3) uint8, mask (S, S) bool -> Occlusion(image, occluded (S, S) bool, coverage)."""
    size = _check_image("image", image)
    _check_array("mask", mask, (size, size), np.bool_)
    if source is not None:
        _check_image("source", source, square=False)
    low, high = (float(f) for f in fraction_range)
    if not 0.0 <= low <= high <= 1.0:
        raise InvalidInputError(f"fraction_range must satisfy 0 <= low <= high <= 1, got {fraction_range}")
    face = int(mask.sum())
    if face == 0:
        raise InvalidInputError("mask has no face pixels to occlude")
    least, most = int(np.ceil(low * face)), int(np.floor(high * face))
    if least > most:
        raise InvalidInputError(f"fraction_range {fraction_range} holds no whole pixel count of a {face}-pixel face")
    target = int(np.clip(round(rng.uniform(low, high) * face), least, most))
    ceiling = min(most, target + max(1, round(_OVERSHOOT * face)))
    out, occluded = image.copy(), np.zeros_like(mask)
    rows, cols = np.nonzero(mask)
    fill = np.zeros_like(image)
    for _ in range(_MAX_SHAPES):
        covered = int((occluded & mask).sum())
        if covered >= target:
            break
        pick = rng.integers(len(rows))
        centre = np.array([cols[pick], rows[pick]], float) + 0.5
        radius = np.sqrt(face) * rng.uniform(0.15, 0.4)
        kind = rng.integers(3 if source is not None else 2)
        fill = _fill(rng, image.shape, kind, source)
        for _shrink in range(6):
            shape = _shape(rng, kind, centre, radius, size)
            if int((shape & mask & ~occluded).sum()) + covered <= ceiling:
                out[shape] = fill[shape]
                occluded |= shape
                break
            radius *= 0.6
    covered = int((occluded & mask).sum())
    if covered < target:  # grow into the nearest free face pixels, exactly up to the target
        free = mask & ~occluded
        seed = occluded if occluded.any() else np.zeros_like(mask)
        if not seed.any():
            seed[rows[len(rows) // 2], cols[len(cols) // 2]] = True
        distance = cv2.distanceTransform((~seed).astype(np.uint8), cv2.DIST_L2, 5)
        order = np.argsort(np.where(free, distance, np.inf), axis=None, kind="stable")[:target - covered]
        grown = np.zeros(mask.size, bool)
        grown[order] = True
        grown = grown.reshape(mask.shape)
        out[grown] = fill[grown]
        occluded |= grown
    return Occlusion(out, occluded, float((occluded & mask).sum() / face))


def _fill(rng: np.random.Generator, shape: tuple, kind: int, source: np.ndarray | None) -> np.ndarray:
    height, width = shape[:2]
    if kind == 2:  # a patch of the source image (resized when the source is smaller)
        if source.shape[0] < height or source.shape[1] < width:
            source = cv2.resize(source, (max(width, source.shape[1]), max(height, source.shape[0])))
        y = rng.integers(source.shape[0] - height + 1)
        x = rng.integers(source.shape[1] - width + 1)
        return np.ascontiguousarray(source[y:y + height, x:x + width])
    if rng.random() < 0.5:  # a flat random colour
        return np.broadcast_to(rng.integers(0, 256, 3).astype(np.uint8), shape).copy()
    noise = rng.integers(0, 256, shape).astype(np.uint8)  # a random texture: smoothed coloured noise
    return cv2.GaussianBlur(noise, (0, 0), rng.uniform(0.5, 3.0))


def _shape(rng: np.random.Generator, kind: int, centre: np.ndarray, radius: float, size: int) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    shift = 4  # sub-pixel drawing: coordinates in 1/16 px, and cprfa corners to OpenCV centres (−0.5)
    if kind == 2:  # rectangle
        half = radius * rng.uniform(0.6, 1.4, 2)
        corners = np.array([centre - half, [centre[0] + half[0], centre[1] - half[1]], centre + half,
                            [centre[0] - half[0], centre[1] + half[1]]])
    elif rng.random() < 0.5:  # ellipse, as a dense polygon
        axes, angle = radius * rng.uniform(0.5, 1.3, 2), rng.uniform(0, np.pi)
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        local = np.stack([axes[0] * np.cos(t), axes[1] * np.sin(t)], axis=1)
        turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        corners = centre + local @ turn.T
    else:  # a random star-shaped polygon
        n = int(rng.integers(3, 9))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        corners = centre + radius * rng.uniform(0.5, 1.3, (n, 1)) * np.stack([np.cos(t), np.sin(t)], axis=1)
    points = np.rint((corners - 0.5) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(canvas, [points], 1, lineType=cv2.LINE_8, shift=shift)
    return canvas.astype(bool)


# --- checks ----------------------------------------------------------------------------------------------


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"shape {value.shape} dtype {value.dtype}"
    return type(value).__name__


def _check_array(name: str, value, shape: tuple[int, ...], dtype) -> None:
    if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != dtype:
        raise InvalidInputError(f"{name} must be a {shape} {np.dtype(dtype).name} array, got {_describe(value)}")


def _check_image(name: str, value, square: bool = True) -> int:
    """Check an (H, W, 3) uint8 RGB image (square unless told); return its height."""
    ok = isinstance(value, np.ndarray) and value.ndim == 3 and value.shape[2] == 3 and value.dtype == np.uint8
    if not ok or value.shape[0] == 0 or value.shape[1] == 0 or (square and value.shape[0] != value.shape[1]):
        kind = "(S, S, 3)" if square else "(H, W, 3)"
        raise InvalidInputError(f"{name} must be a {kind} uint8 RGB image, got {_describe(value)}")
    return value.shape[0]
