"""Another 68-point landmark source for ``FaceAligner(landmark_source=...)`` (cprfa.align.LandmarkSource):
MediaPipe's face mesh, when ``mediapipe`` is installed (``pip install -e ".[mediapipe]"``).

The face mesh's model ships inside the ``mediapipe==0.10.14`` wheel (the later wheels have none), so nothing
is downloaded. That wheel needs protobuf < 5, so the extra also pins onnx below 1.18, the last versions that
accept such a protobuf (cprfa itself only uses onnxruntime, and torch's exporter, which both versions serve).

Each face box is cut as the HS-U-Net's crop is (cprfa.data.crop.crop_box) and resampled to CROP_SIZE; the
mesh runs on it (its own detector finds the face there) and its 468 points go back to the image. The 68 points
of 300-W are the mesh points of MEDIAPIPE_68, for each landmark the mesh point nearest it on average over the
training photos of 300-W (tools/fit_mediapipe_68.py; its record is in the file). Where the mesh finds no face,
the 68 points are NaN: missing, which the HS-U-Net's landmark head fills (cprfa.align).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cprfa.data.crop import crop_box, crop_image
from cprfa.errors import InvalidInputError, ModelFileError

MEDIAPIPE_68 = Path(__file__).parent / "assets" / "mediapipe_68.json"
MESH_POINTS = 468
CROP_SIZE = 256


class MediaPipeLandmarks:
    """``source(image, boxes)`` -> (F, 68, 2) pixels in the 300-W order and 2D convention (NaN where the
    mesh finds no face); ``mesh(image, boxes)`` -> the mesh's own (F, 468, 2) points. ``image``: (H, W, 3)
    uint8 RGB; ``boxes``: tight 68-landmark boxes (x0, y0, x1, y1)."""

    def __init__(self, mapping: str | Path | None = MEDIAPIPE_68):
        """``mapping``: the 68-point map file; None for the mesh alone (tools/fit_mediapipe_68.py, which fits
        the map)."""
        try:
            from mediapipe.python.solutions.face_mesh import FaceMesh
        except ImportError as error:
            raise InvalidInputError('the MediaPipe landmark source needs mediapipe 0.10.14: pip install -e '
                                    f'".[mediapipe]" ({error})') from None
        self.indices = None if mapping is None else _mapping(mapping)
        self._mesh = FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False)

    def __call__(self, image: np.ndarray, boxes: list) -> np.ndarray:
        if self.indices is None:
            raise InvalidInputError("this MediaPipe source has no 68-point map; only its mesh() is available")
        return self.mesh(image, boxes)[:, self.indices]

    def mesh(self, image: np.ndarray, boxes: list) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InvalidInputError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        points = np.full((len(boxes), MESH_POINTS, 2), np.nan)
        for k, box in enumerate(boxes):
            crop = crop_box(tuple(float(v) for v in box))
            found = self._mesh.process(np.ascontiguousarray(crop_image(image, crop, CROP_SIZE)))
            if found.multi_face_landmarks:
                mesh = found.multi_face_landmarks[0].landmark
                normalized = np.array([(point.x, point.y) for point in mesh[:MESH_POINTS]])
                points[k] = np.array(crop[:2]) + normalized * (crop[2] - crop[0])
        return points


def _mapping(path: str | Path) -> np.ndarray:
    """The 68 mesh indices of a mapping file (tools/fit_mediapipe_68.py), checked."""
    try:
        indices = np.asarray(json.loads(Path(path).read_text())["indices"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelFileError(f"{path}: not a MediaPipe 68-point mapping ({error})") from None
    if indices.shape != (68,) or indices.min() < 0 or indices.max() >= MESH_POINTS:
        raise ModelFileError(f"{path}: a mapping holds 68 indices into the {MESH_POINTS} mesh points")
    return indices
