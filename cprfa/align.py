"""``FaceAligner``: photo in, 3D face alignment out (``FaceResult`` per face).

Pipeline per face (DESIGN.md): face box (the BlazeFace detector's, cprfa.detect, or the caller's tight
68-landmark box) → crop by the crop policy, zoomed (``DafiEstimator.zoom``) → HS-U-Net DAFI and landmarks,
the landmarks refined on the crop at twice the resolution (cprfa.dafi.refine) → vertex retrieval (Y^O) → model
fit → pose, coefficients, dense mesh and 68 landmarks in image space.

Five fitting stages (``method``):

- ``"cpr"``: the CPR aligner (cprfa.cpr.regressor), CPRFA: with the shipped weights both rounds (round two
  with consistency-aware updating), fused with the 68 landmarks. Of the paper's methods it is the most
  accurate on near-frontal, occluded and large-pose faces alike, and about four times faster than the on-line
  optimization.
- ``"cpr+pose"``: the CPR aligner, then Levenberg–Marquardt iterations of the on-line optimization's
  objective (below) on the pose alone (POLISH); shape and expression stay the aligner's. The regressors
  leave the pose a little off, which a few cheap iterations on the same points correct: more accurate than
  ``"cpr"`` on every benchmark set for about a tenth more time.
- ``"cpr+refine"`` (default): two of the three stages of the aligner's round one (CPR-H; from both rounds,
  or all three stages, the refinement ends in the same place, later: CPR_ROUNDS, CPR_STAGES), then the three
  pose iterations of ``"cpr+pose"`` and six with identity and expression free too (POLISH): most of what the
  full on-line optimization adds to CPRFA for a small part of its time. A face the landmark head mostly did not see
  (mean landmark confidence under OCCLUDED_CONFIDENCE: an occluder) takes one of the six: there the
  regressors' shape is better than what more iterations fit to the part left visible.
- ``"online"``: the paper's on-line optimization over the DAFI (Fig. 1a) with the HS-U-Net's 68
  landmarks added (cprfa.fitting.baselines.online_optimization_with_landmarks, the landmarks weighing
  LANDMARK_SHARE of the whole): Levenberg–Marquardt with Gaussian priors and a Geman–McClure robust loss on
  the retrieved vertices — those of the shipped CPR vertex selection when enough of them are found (they are
  the best detected and placed), else up to ``max_points`` of all retrieved ones — and, with a wider scale
  (LANDMARK_ROBUST_SCALE), on the landmarks, whose jaw points follow the silhouette.
- ``"cpr+online"``: the on-line optimization in full, started from the CPR aligner's result instead of the
  frontal mean face: several times slower, about as precise as ``"cpr+refine"``.

In the on-line fits that start from the CPR aligner's result, each of the head's landmarks weighs in proportion
to the foreground probability at its point (``DafiPrediction.landmark_foreground``): a landmark hidden by an
occluder, where the head can only guess, weighs little, and the DAFI's vertices and the model place it. From the
mean face (``"online"``) the guessed points are still needed to place the face, so there they weigh fully
(README, "The ablation of the paper": measured both ways).

The 68 sparse landmarks (the on-line fits' landmark term, the CPR aligner's CPR-C2 source) are the
HS-U-Net landmark head's (refined), or the caller's (``align(landmarks=...)``), or those of any other detector passed as
``FaceAligner(landmark_source=...)`` (``LandmarkSource``); the head fills the points a source does not give.

Which is more accurate on which set is measured by benchmarks/bench_cpr.py (README, "The CPR aligner").
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from cprfa.cpr.frame import NormalizedFrame
from cprfa.cpr.regressor import align_point_sets, load_aligner
from cprfa.cpr.selection import DEFAULT_SELECTION, VertexSelection
from cprfa.dafi.predict import DafiEstimator, DafiPrediction
from cprfa.dafi.retrieval import ObservedPoints, VertexRetriever
from cprfa.data.boxes import check_box, check_landmarks, check_optional_number
from cprfa.data.crop import (
    eyes_and_mouth,
    face_roll,
    params_from_crop,
    params_to_crop,
    points_from_crop,
    points_to_crop,
    upright_box,
)
from cprfa.data.images import load_image
from cprfa.detect.detector import Detection, FaceDetector
from cprfa.errors import InvalidInputError, ModelFileError
from cprfa.fitting.baselines import online_optimization_with_landmarks
from cprfa.fitting.optimize import FitOptions
from cprfa.model.contour import silhouette_landmark_ids
from cprfa.model.draw import draw_landmarks, draw_pose_axes, draw_wireframe
from cprfa.model.face_model import FaceModel, default_face_model
from cprfa.model.projection import N_POSE, ParamLayout, euler_to_rotation, model_shape, project
from cprfa.model.render import render_pncc, visible_vertices_of

MIN_DETECTION = 0.02  # fewer than this fraction of the model's vertices retrieved: no face in the box
# A detection is kept only where the HS-U-Net confirms the face: at least this many distinct vertices retrieved per
# foreground pixel (FaceResult.vertex_density). About 0.2 on a face; on what the detector takes for one (a
# sleeve, a patch of hair) the network paints a foreground whose codes match few vertices. Chosen on 300-W
# (README, "Face detection"); given boxes are not checked, MIN_DETECTION alone applies to them.
MIN_VERTEX_DENSITY = 0.09
DENSITY_CROP_SIDE = 128  # the shipped HS-U-Net's input side, at which MIN_VERTEX_DENSITY was chosen
MIN_POINTS = 30  # the fewest selected vertices the fit uses instead of all retrieved ones
# Weight of the landmark head against the DAFI vertices in the fit; chosen on the real training photos
# (README, "Landmark share").
LANDMARK_SHARE = 0.8
METHODS = ("cpr", "cpr+pose", "cpr+refine", "online", "cpr+online")
RUNTIMES = ("auto", "torch", "onnx")
STARTABLE = ("cpr+refine", "cpr+online")  # fits on every parameter from the CPR aligner's result or a given start
POLISH = {"cpr+pose": (3, 0), "cpr+refine": (3, 6)}  # LM iterations after CPRFA: on the pose alone, then on all
# A face whose landmarks' mean confidence (DafiPrediction.landmark_foreground) is below OCCLUDED_CONFIDENCE takes
# at most OCCLUDED_ITERATIONS of those on all. Chosen on the real training photos, plain and occluded (README,
# "Iterations of the refinement").
OCCLUDED_CONFIDENCE = 0.8
OCCLUDED_ITERATIONS = 1
# The CPR aligner's rounds per method (absent: all the weights have). After round one (CPR-H) the refinement of
# "cpr+refine" lands where it lands after both rounds (CPRFA), within 0.01 % NME on the training photos, plain,
# occluded and profiled, and round two costs about 50 ms for one face (README, "Round two before the refinement").
CPR_ROUNDS = {"cpr+refine": 1}
# The stages of each round per method (absent: all, Q). The refinement of "cpr+refine" lands where it lands after
# round one's three stages from its first two (afw, training photos, with the flip: 2.553 against 2.556 % plain,
# 4.114 against 4.114 % occluded, 3.340 against 3.342 % profiled), a third of round one's time sooner; from one
# stage it lands 0.01–0.02 % further off (README, "Round two before the refinement").
CPR_STAGES = {"cpr+refine": 2}
# LM's starting damping in those few iterations (FitOptions.damping), 100 times the on-line optimization's:
# from the CPR aligner's start its nearly Gauss–Newton first steps overshoot. Chosen on the real training photos
# (README, "The refinement's damping").
POLISH_DAMPING = 0.1
# The robust loss's scale on the landmarks in the on-line fits, a fraction of the box size (the DAFI's vertices
# keep FitOptions.robust_scale, 0.02): the head's points are rarely wrong by much, and a narrow Geman–McClure
# loss held back the ones the fit most needed to follow. Chosen on plain and occluded training photos
# (README, "The landmarks' robust scale").
LANDMARK_ROBUST_SCALE = 0.05
# Another sparse 68-point source (a landmark detector): (image (H, W, 3) RGB, face boxes) -> (F, 68, 2)
# pixels in the 300-W order and 2D convention, NaN for a point it does not give.
LandmarkSource = Callable[[np.ndarray, list], np.ndarray]
# A face whose in-plane angle is known (from the detector's keypoints, the given landmarks, a video's frame before
# or the first fit of ``reframe``) and at least this far from upright (degrees) is cropped turned upright
# (cprfa.data.crop): the HS-U-Net saw rolls of ±20° in training and loses the face beyond about 40°. Below it the
# crop stays the plain one.
UPRIGHT_ROLL = 15.0
# A detector with ``any_roll`` may see a face in several quarter turns of the photo, also lying sideways there, with
# the keypoints of an upright face. The HS-U-Net judges between those (FaceAligner._best_seen), but two rolls
# within this many degrees of each other crop the face alike and the judge's choice between them is noise: then the
# detection of the photo as it is stays (helen_test, README "Tilted faces").
TURNED_APART = 45.0
# The quarter turns (counter-clockwise) of a photo in which the detector (without ``any_roll``) finds no face, or
# none the HS-U-Net confirms, where it looks again: faces lying on their side or upside down in a photo of their
# own, without the time ``any_roll`` takes on every photo.
UNSEEN_TURNS = (1, 2, 3)
# The roll of a face is taken from its eyes and mouth (keypoints, landmarks) only where its eyes lie at least this
# fraction of the eyes-to-mouth distance apart (turned less than about 45° from the camera: ``face_tilt``); on
# profiles they give rolls 25–36° off (README "Tilted faces").
FRONTAL_EYES = 0.6
# A frontal face (``is_frontal``) in whose crop the HS-U-Net retrieves fewer vertices per foreground pixel than
# this (``vertex_density``) is looked at again turned by each quarter turn (``_second_look``): it may be upside
# down or on its side, taken for upright. On the first 60 helen_test photos upright faces retrieve 0.16–0.26,
# the same upside down 0.04–0.11; occluded faces of the occluded set go down to 0.05 upright, and profiles (not
# frontal) to 0.09. A quarter turn's crop replaces the first where its density is at least this again and
# TURNED_MARGIN times the first's: without the first condition 3 of those 330 occluded faces were turned
# (mean NME 3.77 -> 4.57 %); with it none (README, "Tilted faces").
UNSURE_DENSITY = 0.13
TURNED_MARGIN = 1.3


@dataclass(frozen=True, eq=False)
class FaceResult:
    """One aligned face. Image pixels (u right, v down, origin at the top-left pixel corner); angles in degrees.

    box: the face box used; score: detection score (None for a given box); pitch, yaw, roll; scale (pixels per
    model unit); translation (2,); rotation (3, 3); params (P,) the full parameter vector (radians, image
    frame); identity (K_id,); expression {ARKit name: weight}; landmarks_2d (68, 2) 300-W convention (jaw on
    the silhouette); landmarks_3d (68, 3) fixed vertices with depth; landmark_visible (68,) bool;
    head_landmarks (68, 2) the HS-U-Net landmark head's own points (300-W convention; whatever sparse source
    the fit used), more precise in 2D than landmarks_2d on near-frontal faces (README); head_confidence (68,)
    the HS-U-Net's foreground probability at each of them: near 0 where an occluder hides the point, but
    also low at the inner lips of an open mouth (the face model's mouth opening is not face) and at times on
    the outline; vertices
    (N, 3) dense mesh with depth; dafi (S, S, 3) codes and dafi_mask (S, S) in the crop; crop_box and crop_roll
    (degrees; the crop turned so that a face of that roll stands upright in it, cprfa.data.crop); observed
    vertices retrieved from the DAFI; timings: ms per stage (detect, crop, dafi, retrieval, fit, outputs), each
    stage's time in the whole call divided by the boxes it took (detected or given, faces or not; detect: 0
    when every box was given)."""

    box: tuple[float, float, float, float]
    score: float | None
    pitch: float
    yaw: float
    roll: float
    scale: float
    translation: np.ndarray
    rotation: np.ndarray = field(repr=False)
    params: np.ndarray = field(repr=False)
    identity: np.ndarray = field(repr=False)
    expression: dict[str, float] = field(repr=False)
    landmarks_2d: np.ndarray = field(repr=False)
    landmarks_3d: np.ndarray = field(repr=False)
    landmark_visible: np.ndarray = field(repr=False)
    head_landmarks: np.ndarray = field(repr=False)
    head_confidence: np.ndarray = field(repr=False)
    vertices: np.ndarray = field(repr=False)
    dafi: np.ndarray = field(repr=False)
    dafi_mask: np.ndarray = field(repr=False)
    crop_box: tuple[float, float, float, float]
    crop_roll: float
    observed_vertices: int
    timings: dict[str, float]

    @property
    def vertex_density(self) -> float:
        """Distinct model vertices retrieved (from the pixels confidently face, ``DafiPrediction.confident``) per
        foreground pixel of the DAFI, counted at a 128² crop's resolution (MIN_VERTEX_DENSITY; a pixel of a
        network of another input side S counts (128 / S)²)."""
        return vertex_density(self.observed_vertices, self.dafi_mask)

    def to_dict(self, dense: bool = False) -> dict:
        """JSON-ready values; ``dense`` adds the mesh vertices (large)."""
        result = {
            "box": list(self.box), "score": self.score,
            "pose": {"pitch": self.pitch, "yaw": self.yaw, "roll": self.roll, "scale": self.scale,
                     "translation": self.translation.tolist(), "rotation": self.rotation.tolist()},
            "identity": self.identity.tolist(), "expression": self.expression,
            "landmarks_2d": self.landmarks_2d.tolist(), "landmarks_3d": self.landmarks_3d.tolist(),
            "landmark_visible": self.landmark_visible.tolist(), "head_landmarks": self.head_landmarks.tolist(),
            "head_confidence": self.head_confidence.tolist(), "crop_box": list(self.crop_box),
            "crop_roll": self.crop_roll,
            "observed_vertices": self.observed_vertices, "vertex_density": self.vertex_density,
            "timings_ms": self.timings,
        }
        if dense:
            result["vertices"] = self.vertices.tolist()
        return result


class _CropBatch(NamedTuple):
    """The HS-U-Net's prediction for a batch of crops, the vertices retrieved from it (Y^O) and its
    ``vertex_density`` per crop (B,)."""

    prediction: DafiPrediction
    observed: ObservedPoints
    densities: np.ndarray


@dataclass(frozen=True, eq=False)
class _ImageFaces:
    """One image's faces before alignment: boxes, detector scores (None for given boxes), the sparse
    landmarks given for them ((68, 2) pixels per face, NaN where missing; None: the landmark head's), the
    parameters each face's fit starts from ((P,) image frame per face, None: the CPR aligner's), the roll each
    face's crop takes out (degrees per face, ``crop_roll``; None: all upright), what the HS-U-Net already saw
    of each face's crop (its crop box and one-row DafiPrediction, made while checking a detected face's roll;
    None: the fit predicts it), whether the boxes are the detector's and the seconds it took on the image."""

    image: np.ndarray
    boxes: list
    scores: list
    landmarks: list[np.ndarray] | None
    starts: list[np.ndarray | None] | None = None
    rolls: list[float] | None = None
    seen: list[tuple | None] | None = None
    detected: bool = False
    detect_seconds: float = 0.0


class FaceAligner:
    """Align faces in photos: ``FaceAligner().align(image, boxes)``.

    ``flip`` (default) runs the HS-U-Net on each crop and on its mirror image and averages the two
    (cprfa.dafi.predict.DafiEstimator): a more precise DAFI and landmark head for twice the network's work,
    about 5 % of the whole per face; ``flip=False`` for speed. ``refine`` (default) refines the landmark head's
    points with the landmark refiner of ``refiner_weights`` (default: the shipped one; cprfa.dafi.refine).
    ``runtime``: what runs the networks. "auto" (default): torch the HS-U-Net and the refiner (on ``device``),
    onnxruntime the CPR aligner of one to four faces, networks and all, as one graph run once per face (on the
    CPU, as always; about twice as fast as torch for one face; more faces in torch; cprfa.cpr.onnx, which caches
    its export); "torch" or "onnx": all of them. onnxruntime's sessions take torch's thread count when the
    aligner is made. ``fit_options`` set the on-line fits of
    "online" and "cpr+online"; the refinement of "cpr+refine" and "cpr+pose" takes their priors and robust loss
    with its own iterations, damping and float32 (``polish_options``). ``detector`` finds the faces when no boxes
    are given (default: ``FaceDetector()``, the shipped weights and their threshold). ``reframe`` aligns each
    detected face a second time in the tight box of its landmarks, started from its first fit (STARTABLE
    methods): the detector's box is looser than that, most of all on profiles and small faces (README, "End to
    end"); about 70 % more time for detected faces, none for given boxes."""

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", model: FaceModel | None = None,
                 max_points: int = 512, fit_options: FitOptions | None = None,
                 selection: str | Path | None = DEFAULT_SELECTION, method: str = "cpr+refine",
                 cpr_weights: str | Path | None = None, landmark_source: LandmarkSource | None = None,
                 runtime: str = "auto", flip: bool = True, refine: bool = True,
                 refiner_weights: str | Path | None = None, detector: FaceDetector | None = None,
                 reframe: bool = False):
        if method not in METHODS:
            raise InvalidInputError(f"method must be one of {METHODS}, got '{method}'")
        if runtime not in RUNTIMES:
            raise InvalidInputError(f"runtime must be one of {RUNTIMES}, got '{runtime}'")
        if detector is not None and not callable(getattr(detector, "detect", None)):
            raise InvalidInputError(f"detector must be a FaceDetector (cprfa.detect.detector), got {detector!r}")
        self.model = model or default_face_model()
        if runtime == "onnx" and device != "cpu":
            raise InvalidInputError("runtime 'onnx' runs on the CPU; use device='cpu'")
        network_runtime = "torch" if runtime == "auto" else runtime
        self.estimator = DafiEstimator.from_file(weights, device=device, runtime=network_runtime, flip=flip,
                                                 refine=refine, refiner_path=refiner_weights)
        calibrated = self.estimator.vertex_offset
        if calibrated is not None and len(calibrated) != self.model.n_vertices:
            raise ModelFileError(f"the HS-U-Net {weights or 'shipped'} was calibrated for a face model of "
                                 f"{len(calibrated)} vertices, not {self.model.n_vertices}")
        self.retriever = VertexRetriever(self.model)
        self.max_points = max_points
        self.fit_options = fit_options or FitOptions(robust="geman-mcclure")
        has_selection = selection is not None and Path(selection).is_file()
        self.selected = VertexSelection.load(selection).vertex_ids if has_selection else None
        self.method = method
        self.cpr = load_aligner(cpr_weights, self.model).fused() if method.startswith("cpr") else None
        if self.cpr is not None and runtime != "torch":  # the aligner runs on the CPU whatever ``device`` says
            from cprfa.cpr.onnx import OnnxAligner

            self.cpr.runtime = OnnxAligner(self.cpr)
        self.landmark_source = landmark_source
        self.detector = detector  # None: the shipped one, made on first use
        self.reframe = reframe

    def align(self, image, boxes=None, landmarks=None, starts=None, scores=None,
              rolls=None) -> list[FaceResult | None]:
        """Align the faces of ``image`` (a path, a PIL image, or an array: (H, W, 3) uint8 RGB, or any layout
        ``cprfa.data.images.load_image`` reads; OpenCV's BGR wants ``load_image(image, bgr=True)``): those the
        face detector finds, or those in ``boxes`` [(x0, y0, x1, y1), ...] (tight 68-landmark boxes), or those of
        ``landmarks`` (F, 68, 2) (the user's own 68 points per face, 300-W order, pixels): their tight boxes
        are the face boxes and the points replace the HS-U-Net's landmark head (in the on-line fits and as the
        CPR aligner's sparse source).
        Returns one entry per face, in the order of the boxes (detections: best score first): its FaceResult, or
        None where the HS-U-Net recognised fewer than MIN_DETECTION of the model's vertices in the box (no face
        there). Detections the HS-U-Net does not confirm (``is_confirmed``) are left out, unfitted; where none is
        left, the detector (a ``FaceDetector`` without ``any_roll``) looks at the image turned by a quarter, a
        half and three quarters (UNSEEN_TURNS), and an image where it finds no face there either gives an empty
        list.
        ``starts``, with ``boxes``: per box the same face's FaceResult in the frame before (a video, cprfa.video),
        its (P,) parameters, or None; a face's fit then starts there instead of from the CPR aligner, which it
        skips (the methods of STARTABLE, whose fit on every parameter can move the start: ``cpr+refine``,
        ``cpr+online``). A start far from its box misleads the fit: give each box its own face's.
        ``scores``, with ``boxes``: per box a face detector's score, or None. A box with a score is a detection,
        as one of the detector's own: it carries that score, and is left out, unfitted, when the HS-U-Net does not
        confirm it (for a detector of one's own, or a video's detections beside its followed faces).
        ``rolls``, with ``boxes``: per box the face's in-plane angle in degrees (FaceResult.roll's sense), or None;
        from UPRIGHT_ROLL on, that face is cropped turned upright, its box being that of the face so turned about
        the box's centre (cprfa.data.crop.upright_box). Detected faces take theirs from the detector's keypoints,
        given landmarks from the eyes and mouth; a given box without a roll is taken as upright."""
        if starts is None:
            return self._align_faces([self._faces_of(image, boxes, landmarks, scores, rolls)])[0]
        if self.method not in STARTABLE:
            raise InvalidInputError(f"starts need a method of {STARTABLE}, not '{self.method}'")
        starts = list(starts)
        if boxes is None or len(starts) != len(boxes):
            raise InvalidInputError("starts need boxes: one start (a FaceResult, parameters or None) per box")
        count = ParamLayout.of(self.model).size
        initials = []
        for k, start in enumerate(starts):
            values = None if start is None else np.asarray(getattr(start, "params", start), dtype=np.float64)
            if values is not None and (values.shape != (count,) or not np.isfinite(values).all()):
                raise InvalidInputError(f"start {k}: a FaceResult or {count} finite parameters, got shape "
                                        f"{values.shape}")
            initials.append(values)
        faces = self._faces_of(image, boxes, landmarks, scores, rolls)
        return self._align_faces([dataclasses.replace(faces, starts=initials)])[0]

    def align_batch(self, images, boxes=None, landmarks=None, rolls=None,
                    turn_unseen: bool = True) -> list[list[FaceResult | None]]:
        """``align`` for several images at once: the faces of all of them go through the networks and the fits
        together, which is faster per face. ``boxes``, ``landmarks`` and ``rolls``, when given, hold one entry
        per image (None for an image: detect its faces; no rolls: its boxes upright); ``starts`` and ``scores``
        are ``align``'s alone. ``turn_unseen``: an image where the detector finds no face upright is looked at
        in its quarter turns (UNSEEN_TURNS), as ``align`` does; False for a video's frames, whose faces stand as
        in the frames before. Returns one list per image, as ``align`` does (up to a fraction of a pixel: the
        on-line fit runs batched)."""
        images = list(images)
        given = {"boxes": boxes, "landmarks": landmarks, "rolls": rolls}
        for name, values in given.items():
            if values is not None and len(values) != len(images):
                raise InvalidInputError(f"{name} must hold one entry per image: {len(values)} for {len(images)}")
        return self._align_faces([self._faces_of(image, **{name: None if values is None else values[k]
                                                           for name, values in given.items()})
                                  for k, image in enumerate(images)], turn_unseen)

    def detect(self, image, turns: tuple[int, ...] | None = None) -> list[Detection]:
        """The faces the detector finds in ``image`` (a path, an RGB array or a PIL image), best score first;
        ``Detection.face_box`` is the box ``align`` takes, and ``Detection.roll`` the face's roll from its keypoints
        (``align`` turns the crop by it where ``face_tilt`` and the HS-U-Net agree: ``detected_roll``). ``turns``
        (a ``FaceDetector``'s): the quarter turns of the photo it looks at, default its own. A detector with
        ``any_roll``, or several turns, may see one face in several: the HS-U-Net judges which
        (``_best_seen``)."""
        if self.detector is None:
            self.detector = FaceDetector()
        image = _as_rgb(image)
        if turns is None and not getattr(self.detector, "any_roll", False):
            return self.detector.detect(image)
        return self.detector.detect(image, choose=lambda candidates: self._best_seen(image, candidates), turns=turns)

    def _best_seen(self, image: np.ndarray, candidates: list[Detection]) -> int:
        """Of detections of one face (the detector's first is of the photo as it is, when there is one), the one
        whose crop (turned upright by its roll) the HS-U-Net sees most face in (``vertex_density``); the first where
        the best stands within TURNED_APART of its roll."""
        densities = self._views(image, [(d.face_box, face_tilt(*d.keypoints[[0, 1, 3]])) for d in candidates])[2]
        best = int(np.argmax(densities))
        apart = abs((candidates[best].roll - candidates[0].roll + 180.0) % 360.0 - 180.0)
        return best if apart > TURNED_APART else 0

    def detected_roll(self, image: np.ndarray, detection: Detection) -> float:
        """The roll (``align``'s ``rolls``) a detected face's crop takes out, ``image`` an RGB array: its keypoints'
        (``face_tilt``), where the HS-U-Net sees more face in the crop so turned than in the upright one (on some
        profiles the keypoints misjudge it), else 0."""
        return self._detected_view(image, detection)[0]

    def _detected_view(self, image: np.ndarray, detection: Detection) -> tuple[float, tuple | None]:
        """``detected_roll``, and the HS-U-Net's view of the crop it chose (``_ImageFaces.seen``), which the fit
        takes as it is; None where the keypoints find the face upright (nothing was predicted)."""
        roll = face_tilt(*detection.keypoints[[0, 1, 3]])
        if not roll:
            return 0.0, None
        boxes, prediction, (upright, turned) = self._views(image, [(detection.face_box, 0.0),
                                                                   (detection.face_box, roll)])
        chosen = int(turned > upright)
        return roll if chosen else 0.0, (boxes[chosen], batch_rows(prediction, [chosen]))

    def _views(self, image: np.ndarray, faces: list[tuple[tuple, float]]) -> tuple[list, DafiPrediction, np.ndarray]:
        """The crop boxes, the HS-U-Net's prediction and its ``vertex_density`` (B,) in the crops of faces given
        as (face box, crop roll)."""
        crops, boxes, detail = self._crops([(image, box, roll) for box, roll in faces])
        prediction = self.estimator.predict(crops, detail=detail)
        return boxes, prediction, self._observe(prediction)[1]

    def _observe(self, prediction: DafiPrediction) -> tuple[ObservedPoints, np.ndarray]:
        """The vertices retrieved from each crop of a prediction (Y^O) and its ``vertex_density`` (B,)."""
        observed = self.retriever(prediction.dafi, prediction.confident, offset=self.estimator.vertex_offset)
        return observed, np.array([vertex_density(int(count), mask) for count, mask in
                                   zip(observed.detected.sum(axis=1), prediction.mask, strict=True)])

    def _second_look(self, faces: list[tuple[np.ndarray, tuple]], crop_boxes: list, rolls: list[float],
                     batch: _CropBatch) -> _CropBatch:
        """Faces cropped the wrong way up, cropped again: those the landmark head finds tilted in their crops
        (``face_tilt``: a box given without its roll, keypoints that missed it) turned by that much more, and
        frontal faces (``is_frontal``) of which the HS-U-Net recognises little (at least MIN_DETECTION of the
        vertices, but a ``vertex_density`` under UNSURE_DENSITY: upside down or on their side, taken for
        upright) turned by each quarter turn, then by the tilt the head finds left in the best of those.
        ``faces``: (image, face box) per crop; ``batch``: the crops', returned updated, as ``crop_boxes`` and
        ``rolls`` are in place."""
        looks, unsure = [], set()  # looks: (face, the new crop's roll, the density it must beat)
        for j, roll in enumerate(rolls):
            eyes_mouth = eyes_and_mouth(batch.prediction.landmarks[j])
            density = batch.densities[j]
            if tilt := face_tilt(*eyes_mouth):
                looks.append((j, roll + tilt, density))
            elif (batch.observed.detection_rate[j] >= MIN_DETECTION and density < UNSURE_DENSITY
                  and is_frontal(*eyes_mouth)):
                bar = max(TURNED_MARGIN * density, UNSURE_DENSITY)  # the face as an upright one is seen
                looks += [(j, roll + turn, bar) for turn in (90.0, 180.0, -90.0)]
                unsure.add(j)
        batch, turned = self._looks(faces, crop_boxes, rolls, batch, looks)
        looks = [(j, rolls[j] + tilt, batch.densities[j]) for j in unsure.intersection(turned)
                 if (tilt := face_tilt(*eyes_and_mouth(batch.prediction.landmarks[j])))]
        return self._looks(faces, crop_boxes, rolls, batch, looks)[0]

    def _looks(self, faces: list[tuple[np.ndarray, tuple]], crop_boxes: list, rolls: list[float],
               batch: _CropBatch, looks: list[tuple[int, float, float]]) -> tuple[_CropBatch, list[int]]:
        """``_second_look``'s crops of ``looks`` (face, crop roll, the vertex density to beat): the best that
        beats its face's bar replaces that face's crop. Returns ``batch`` updated and the faces whose crop it
        replaced."""
        if not looks:
            return batch, []
        looks = [(j, (roll + 180.0) % 360.0 - 180.0, bar) for j, roll, bar in looks]
        crops, boxes, detail = self._crops([(*faces[j], roll) for j, roll, _ in looks])
        prediction = self.estimator.predict(crops, detail=detail)
        observed, densities = self._observe(prediction)
        best = {}  # face -> its best look that beats the bar
        for n, (j, roll, bar) in enumerate(looks):
            if densities[n] > bar and (j not in best or densities[n] > densities[best[j]]):
                best[j] = n
        if not best:
            return batch, []
        rows = list(range(len(rolls)))  # per face its row in the batches joined: the first crop's or a look's
        for j, n in best.items():
            rows[j] = len(rolls) + n
            crop_boxes[j], rolls[j] = boxes[n], looks[n][1]
        return _CropBatch(batch_rows(joined_batches([batch.prediction, prediction]), rows),
                          batch_rows(joined_batches([batch.observed, observed]), rows),
                          np.concatenate([batch.densities, densities])[rows]), list(best)

    def _faces_of(self, image, boxes, landmarks, scores=None, rolls=None, turns=None) -> _ImageFaces:
        """An image's face boxes (given, from the given landmarks, or detected: in the quarter turns ``turns`` of
        the photo, default the detector's), scores (detected, or given with the boxes), sparse landmarks and
        rolls (``align``)."""
        if scores is not None and (boxes is None or len(scores) != len(boxes)):
            raise InvalidInputError("scores need boxes: one score (a number or None) per box")
        if rolls is not None and (boxes is None or len(rolls) != len(boxes)):
            raise InvalidInputError("rolls need boxes: one roll (degrees or None) per box")
        image = _as_rgb(image)
        given = None
        if landmarks is not None:
            if boxes is not None:
                raise InvalidInputError("give boxes or landmarks, not both")
            given = [check_landmarks(face, f"landmarks of face {i}") for i, face in enumerate(landmarks)]
            frames = [landmark_frame(face) for face in given]
            boxes, rolls = [box for box, _ in frames], [roll for _, roll in frames]
        detect_seconds, seen, detected = 0.0, None, boxes is None
        if detected:
            start = time.perf_counter()
            detections = self.detect(image) if turns is None else self.detect(image, turns)
            views = [self._detected_view(image, d) for d in detections]
            rolls, seen = [roll for roll, _ in views], [view for _, view in views]
            detect_seconds = time.perf_counter() - start
            boxes, scores = [d.face_box for d in detections], [d.score for d in detections]
        else:
            boxes = [check_box(box, f"box {i}") for i, box in enumerate(boxes)]
            scores = [None] * len(boxes) if scores is None else [check_optional_number(score, f"score {i}")
                                                                  for i, score in enumerate(scores)]
            if given is None and rolls is not None:
                rolls = [crop_roll(check_optional_number(roll, f"roll {i}")) for i, roll in enumerate(rolls)]
        if given is None and self.landmark_source is not None and boxes:
            given = _source_landmarks(self.landmark_source, image, boxes)
        return _ImageFaces(image, boxes, scores, given, rolls=rolls, seen=seen, detected=detected,
                           detect_seconds=detect_seconds)

    def _align_faces(self, images: list[_ImageFaces], turn_unseen: bool = True) -> list[list[FaceResult | None]]:
        """The pipeline on every face of the images at once (module docstring), without the detections the
        HS-U-Net does not confirm; with ``turn_unseen``, images where the detector found no face again in their
        quarter turns; with ``reframe``, each detected face once more from its landmarks' box."""
        results = _confirmed(self._fit(images), images)
        unseen = [k for k, faces in enumerate(images) if faces.detected and not results[k]]
        if unseen and turn_unseen and isinstance(self.detector, FaceDetector) and self.detector.turns == (0,):
            images = list(images)  # no face found upright: the detector looks at the other quarter turns
            turned = [self._faces_of(images[k].image, None, None, turns=UNSEEN_TURNS) for k in unseen]
            for k, faces, again in zip(unseen, turned, _confirmed(self._fit(turned), turned), strict=True):
                images[k], results[k] = faces, again
        if not self.reframe:
            return results
        detected = [k for k, faces in enumerate(images) if results[k] and faces.scores[0] is not None]
        again = self._fit([self._reframed(images[k].image, results[k]) for k in detected], confirm=False)
        for k, second in zip(detected, again, strict=True):
            results[k] = [first if new is None else dataclasses.replace(
                new, timings={key: first.timings[key] + value for key, value in new.timings.items()})
                for first, new in zip(results[k], second, strict=True)]
        return results

    def _reframed(self, image: np.ndarray, results: list[FaceResult]) -> _ImageFaces:
        """An image's aligned faces, boxed by their landmarks (``landmarks_2d``, turned upright as their roll
        asks) and, with the methods of STARTABLE, started from their fits."""
        frames = [landmark_frame(result.landmarks_2d) for result in results]
        boxes, rolls = [box for box, _ in frames], [roll for _, roll in frames]
        given = _source_landmarks(self.landmark_source, image, boxes) if self.landmark_source is not None else None
        starts = [result.params for result in results] if self.method in STARTABLE else None
        return _ImageFaces(image, boxes, [result.score for result in results], given, starts, rolls)

    def _fit(self, images: list[_ImageFaces], confirm: bool = True) -> list[list[FaceResult | None]]:
        """The pipeline on every face of the images at once: per image and box its FaceResult or None (also for
        a detection the HS-U-Net does not confirm, with ``confirm``: it is not fitted)."""
        owners = [(k, i) for k, faces in enumerate(images) for i in range(len(faces.boxes))]
        results: list[list[FaceResult | None]] = [[None] * len(faces.boxes) for faces in images]
        if not owners:
            return results
        size = self.estimator.input_size
        timings = {"detect": sum(faces.detect_seconds for faces in images)}
        start = time.perf_counter()
        rolls = [images[k].rolls[i] if images[k].rolls is not None else 0.0 for k, i in owners]
        located = [(images[k].image, images[k].boxes[i]) for k, i in owners]
        views = [images[k].seen[i] if images[k].seen is not None else None for k, i in owners]
        fresh = [j for j, view in enumerate(views) if view is None]  # crops the roll check did not predict
        if fresh:
            crops, boxes, detail = self._crops([(*located[j], rolls[j]) for j in fresh])
        timings["crop"] = time.perf_counter() - start
        start = time.perf_counter()
        if len(fresh) == len(owners):
            crop_boxes, prediction = boxes, self.estimator.predict(crops, detail=detail)
        else:  # some crops were predicted by the roll check: the others now, then all in the faces' order
            predicted = self.estimator.predict(crops, detail=detail) if fresh else None
            for n, j in enumerate(fresh):
                views[j] = (boxes[n], batch_rows(predicted, [n]))
            crop_boxes, prediction = [box for box, _ in views], joined_batches([view for _, view in views])
        timings["dafi"] = time.perf_counter() - start
        start = time.perf_counter()
        batch = _CropBatch(prediction, *self._observe(prediction))
        timings["retrieval"] = time.perf_counter() - start
        start = time.perf_counter()
        prediction, observed, densities = self._second_look(located, crop_boxes, rolls, batch)
        timings["dafi"] += time.perf_counter() - start
        start = time.perf_counter()
        chosen = self._choose_vertices(observed)
        counts = observed.detected.sum(axis=1)  # distinct vertices retrieved per face
        for j, (k, i) in enumerate(owners):  # a detection the HS-U-Net does not confirm is dropped before the fit
            if confirm and images[k].scores[i] is not None and densities[j] < MIN_VERTEX_DENSITY:
                chosen[j] = None
        faces = [j for j, found in enumerate(chosen) if found is not None]
        if not faces:
            return results
        head = torch.from_numpy(prediction.landmarks[faces].astype(np.float64))
        confidence = torch.from_numpy(prediction.landmark_foreground[faces])
        for row, j in enumerate(faces):  # the caller's or the landmark source's points; the head fills gaps
            k, i = owners[j]
            if images[k].landmarks is not None:
                source = torch.from_numpy(points_to_crop(images[k].landmarks[i], crop_boxes[j], size, rolls[j]))
                given = torch.isfinite(source).all(dim=1)
                head[row] = torch.where(given[:, None], source, head[row])
                confidence[row, given] = 1.0
        crop_params = None
        if self.cpr is not None:  # each face's start: the caller's (``starts``), else the CPR aligner's result
            crop_params = torch.zeros(len(faces), ParamLayout.of(self.model).size, dtype=torch.float64)
            cold = []
            for row, j in enumerate(faces):
                k, i = owners[j]
                initial = images[k].starts[i] if images[k].starts is not None else None
                if initial is None:
                    cold.append(row)
                else:
                    crop_params[row] = params_to_crop(torch.from_numpy(initial).double(), crop_boxes[j], size,
                                                      rolls[j])
            if cold:
                frame = NormalizedFrame.for_crop(self.model, size)
                rows = [faces[row] for row in cold]
                points = frame.points_to_frame(torch.from_numpy(observed.positions[rows]))
                normalized = align_point_sets(self.cpr, points, torch.from_numpy(observed.detected[rows]),
                                              frame.points_to_frame(head[cold]).float(),
                                              rounds=CPR_ROUNDS.get(self.method),
                                              stages=CPR_STAGES.get(self.method))
                crop_params[cold] = frame.params_from_frame(normalized).double()
        if self.method != "cpr":
            points, ids, weights = _padded(observed, faces, [chosen[j] for j in faces])
            if self.method in POLISH:
                crop_params = polish_fit(self.model, points, ids, weights, head, confidence, crop_params,
                                         polish_options(self.fit_options, self.method))
            else:
                crop_params = online_optimization_with_landmarks(self.model, points, ids, weights, head,
                                                                 LANDMARK_SHARE, self.fit_options, crop_params,
                                                                 LANDMARK_ROBUST_SCALE,
                                                                 confidence if self.cpr is not None else None)
        params = torch.stack([params_from_crop(crop_params[row], crop_boxes[j], size, rolls[j])
                              for row, j in enumerate(faces)])
        timings["fit"] = time.perf_counter() - start
        start = time.perf_counter()
        # the landmarks and the crop's mesh are picked from it; float32 halves the basis read, ~1e-5 px off
        shape = model_shape(self.model, params.float()).double()
        vertices = project(shape, params[:, :N_POSE])
        points_2d = torch.gather(vertices, 1,
                                 silhouette_landmark_ids(self.model, params, shape)[..., None].expand(-1, -1, 3))
        points_3d = vertices[:, self.model.landmarks68]
        crop_vertices = project(shape, crop_params[:, :N_POSE].to(shape.dtype))
        landmark_visible = visible_vertices_of(crop_vertices, self.model.torch_tensors()["triangles"],
                                               torch.as_tensor(self.model.landmarks68), size, size)
        rotation = euler_to_rotation(params[:, :3])
        timings["outputs"] = time.perf_counter() - start
        per_face = {key: round(1000 * value / len(owners), 2) for key, value in timings.items()}
        layout = ParamLayout.of(self.model)
        for row, j in enumerate(faces):
            k, i = owners[j]
            p = params[row].numpy()
            results[k][i] = FaceResult(
                box=images[k].boxes[i], score=images[k].scores[i],
                pitch=float(np.degrees(p[0])), yaw=float(np.degrees(p[1])), roll=float(np.degrees(p[2])),
                scale=float(p[3]), translation=p[4:6].copy(), rotation=rotation[row].numpy(), params=p,
                identity=p[layout.identity].copy(),
                expression={name: float(w) for name, w in zip(self.model.expression_names, p[layout.expression],
                                                              strict=True)},
                landmarks_2d=points_2d[row, :, :2].numpy(), landmarks_3d=points_3d[row].numpy(),
                landmark_visible=landmark_visible[row].numpy(),
                head_landmarks=points_from_crop(prediction.landmarks[j].astype(np.float64), crop_boxes[j],
                                                size, rolls[j]),
                head_confidence=prediction.landmark_foreground[j].copy(),
                vertices=vertices[row].numpy(), dafi=prediction.dafi[j], dafi_mask=prediction.mask[j],
                crop_box=tuple(float(v) for v in crop_boxes[j]), crop_roll=rolls[j],
                observed_vertices=int(counts[j]),
                timings=per_face)
        return results

    def _crops(self, faces: list[tuple[np.ndarray, tuple, float]]) -> tuple[np.ndarray, list, np.ndarray | None]:
        """The HS-U-Net's crops (B, S, S, 3), their crop boxes and the refiner's detail crops (None without a
        refiner) of faces given as (image, face box, crop roll)."""
        crops, boxes = zip(*(self.estimator.crop(image, box, roll) for image, box, roll in faces), strict=True)
        detail = None
        if self.estimator.refiner is not None:
            detail = np.stack([self.estimator.detail_crop(image, crop_box, roll)
                               for (image, _, roll), crop_box in zip(faces, boxes, strict=True)])
        return np.stack(crops), list(boxes), detail

    def _choose_vertices(self, observed) -> list[np.ndarray | None]:
        """Per face the retrieved vertices to fit (module docstring), or None when too few were found."""
        rng = np.random.default_rng(0)
        chosen = []
        for detected in observed.detected:
            found = np.flatnonzero(detected)
            if len(found) < MIN_DETECTION * len(detected):
                chosen.append(None)
                continue
            if self.selected is not None:
                selected = np.intersect1d(found, self.selected)
                if len(selected) >= MIN_POINTS:
                    found = selected
            if len(found) > self.max_points:
                found = np.sort(rng.choice(found, self.max_points, replace=False))
            chosen.append(found)
        return chosen


def batch_rows(batch, rows: list[int]):
    """Some rows of a batch of crops' results (a DafiPrediction, ObservedPoints: a dataclass of arrays)."""
    return type(batch)(**{field.name: getattr(batch, field.name)[rows] for field in dataclasses.fields(batch)})


def joined_batches(parts: list):
    """One batch of the rows of several (``batch_rows``' kind), in order."""
    return type(parts[0])(**{field.name: np.concatenate([getattr(part, field.name) for part in parts])
                             for field in dataclasses.fields(parts[0])})


def crop_roll(roll: float | None) -> float:
    """The roll (degrees) a face's crop takes out: the face's own from UPRIGHT_ROLL on, else 0 (the plain crop)."""
    return float(roll) if roll is not None and abs(roll) >= UPRIGHT_ROLL else 0.0


def face_tilt(right_eye, left_eye, mouth) -> float:
    """The roll (degrees) a face's crop takes out, from the centres of its eyes (the subject's right and left) and
    mouth: their ``face_roll`` (cprfa.data.crop) through ``crop_roll``, where the eyes lie at least FRONTAL_EYES of
    the eyes-to-mouth distance apart, else 0."""
    return crop_roll(face_roll(right_eye, left_eye, mouth)) if is_frontal(right_eye, left_eye, mouth) else 0.0


def is_frontal(right_eye, left_eye, mouth) -> bool:
    """Whether a face's eyes lie at least FRONTAL_EYES of the eyes-to-mouth distance apart (centres of the eyes
    and mouth, as ``face_tilt`` takes them): a face turned less than about 45° from the camera."""
    right_eye, left_eye, mouth = (np.asarray(point, dtype=np.float64) for point in (right_eye, left_eye, mouth))
    apart = np.linalg.norm(left_eye - right_eye) / max(np.linalg.norm(mouth - (left_eye + right_eye) / 2), 1e-9)
    return bool(apart >= FRONTAL_EYES)


def landmark_frame(points: np.ndarray) -> tuple[tuple[float, float, float, float], float]:
    """The face box and crop roll (``align``'s ``boxes`` and ``rolls``) of a face known by its 68 landmarks
    (300-W order): the ``face_tilt`` of its eyes and mouth, and the tight box of the landmarks turned upright by
    it (cprfa.data.crop.upright_box)."""
    roll = face_tilt(*eyes_and_mouth(points))
    return upright_box(points, roll), roll


def vertex_density(observed_vertices: int, dafi_mask: np.ndarray) -> float:
    """``FaceResult.vertex_density`` of a face with ``observed_vertices`` retrieved from a DAFI of ``dafi_mask``
    (S, S) foreground."""
    pixels = int(dafi_mask.sum()) * (DENSITY_CROP_SIDE / dafi_mask.shape[0]) ** 2
    return observed_vertices / max(pixels, 1.0)


def is_confirmed(result: FaceResult | None) -> bool:
    """Whether the HS-U-Net confirms a detected face: it found one in the box and retrieved at least
    MIN_VERTEX_DENSITY distinct vertices per foreground pixel there."""
    return result is not None and result.vertex_density >= MIN_VERTEX_DENSITY


def _confirmed(results: list[list[FaceResult | None]], images: list[_ImageFaces]) -> list[list[FaceResult | None]]:
    """The results without the detections the HS-U-Net does not confirm; those of given boxes all stay."""
    return [[result for result, score in zip(image_results, faces.scores, strict=True)
             if score is None or is_confirmed(result)] for image_results, faces in zip(results, images, strict=True)]


def polish_options(options: FitOptions, method: str) -> FitOptions:
    """``options`` with the iteration counts, damping and precision of a method that polishes CPRFA's result
    (POLISH, POLISH_DAMPING; float32, FitOptions.dtype: from the aligner's start it lands where float64 does)."""
    pose_iterations, iterations = POLISH[method]
    return dataclasses.replace(options, pose_iterations=pose_iterations, iterations=iterations,
                               damping=POLISH_DAMPING, dtype=torch.float32)


def polish_fit(model: FaceModel, points: torch.Tensor, vertex_ids: torch.Tensor, weights: torch.Tensor,
               landmarks: torch.Tensor, confidence: torch.Tensor, initial: torch.Tensor, options: FitOptions,
               landmark_share: float = LANDMARK_SHARE, landmark_robust_scale: float = LANDMARK_ROBUST_SCALE,
               occluded_confidence: float = OCCLUDED_CONFIDENCE) -> torch.Tensor:
    """The on-line fit over the DAFI's vertices and the landmarks (each weighed by its ``confidence``) that
    polishes the CPR aligner's ``initial`` parameters with ``options`` (polish_options); faces whose mean
    landmark confidence is below ``occluded_confidence`` take at most OCCLUDED_ITERATIONS iterations with the
    shape free. Shape: points (B, M, 2), vertex_ids (B, M), weights (B, M), landmarks (B, 68, 2),
    confidence (B, 68), initial (B, P) -> params (B, P)."""
    occluded = confidence.mean(dim=1) < occluded_confidence
    params = initial.clone()
    capped = dataclasses.replace(options, iterations=min(options.iterations, OCCLUDED_ITERATIONS))
    for rows, group_options in ((~occluded, options), (occluded, capped)):
        if rows.any():
            params[rows] = online_optimization_with_landmarks(model, points[rows], vertex_ids[rows], weights[rows],
                                                              landmarks[rows], landmark_share, group_options,
                                                              initial[rows], landmark_robust_scale,
                                                              confidence[rows]).to(params.dtype)
    return params


def _source_landmarks(source: LandmarkSource, image: np.ndarray, boxes: list) -> list[np.ndarray]:
    """A landmark source's points for the faces in ``boxes``, checked: (68, 2) per face, NaN where missing."""
    try:
        points = np.asarray(source(image, boxes), dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidInputError(f"the landmark source did not return 68 points per face ({error})") from None
    if points.shape != (len(boxes), 68, 2):
        raise InvalidInputError(f"the landmark source must return ({len(boxes)}, 68, 2) points, got {points.shape}")
    return list(points)


def _padded(observed, faces: list[int], chosen: list[np.ndarray]):
    """Points (B, M, 2), vertex ids (B, M) and weights (B, M) of the chosen vertices, padded with weight 0."""
    count = max(len(found) for found in chosen)
    points = torch.zeros(len(faces), count, 2, dtype=torch.float64)
    ids = torch.zeros(len(faces), count, dtype=torch.long)
    weights = torch.zeros(len(faces), count, dtype=torch.float64)
    for k, (i, found) in enumerate(zip(faces, chosen, strict=True)):
        points[k, :len(found)] = torch.from_numpy(observed.positions[i, found].astype(np.float64))
        ids[k, :len(found)] = torch.from_numpy(found)
        weights[k, :len(found)] = 1.0
    return points, ids, weights


def draw_face_result(image: np.ndarray, result: FaceResult, model: FaceModel | None = None) -> np.ndarray:
    """Overlay on an RGB uint8 image: the fitted mesh's front-facing wireframe, the 68 landmarks (2D
    convention) and the pose axes at the nose tip. Returns a new image."""
    model = model or default_face_model()
    overlay = draw_wireframe(image, result.vertices, model.triangles, alpha=0.25)
    overlay = draw_landmarks(overlay, result.landmarks_2d)
    face_width = float(np.ptp(result.landmarks_2d[:, 0]))
    return draw_pose_axes(overlay, result.rotation, result.landmarks_3d[30, :2], length=0.5 * face_width)


@dataclass(frozen=True)
class FaceMaps:
    """The fitted faces of a photo rendered into it (``render_faces``).

    pncc: (H, W, 3) float32 PNCC code of the surface each pixel shows, in [0, 1], 0 on the background;
    depth: (H, W) float32 image-space depth (pixels, larger = nearer, DESIGN.md), -inf on the background;
    face: (H, W) int index of the face each pixel shows in the results given, -1 on the background."""

    pncc: np.ndarray
    depth: np.ndarray
    face: np.ndarray


def render_faces(image_size: tuple[int, int], results: list[FaceResult | None],
                 model: FaceModel | None = None) -> FaceMaps:
    """Render the fitted meshes of ``results`` (None entries skipped) into an image of ``image_size`` =
    (height, width). Each face is rasterized in the box of its mesh only, so a large photo costs no more than its
    faces. A face's depth is relative to its own centre (weak perspective has no distance), so where faces
    overlap the larger one (greater scale) is taken as the nearer and drawn in front."""
    model = model or default_face_model()
    height, width = image_size
    pncc = np.zeros((height, width, 3), np.float32)
    depth = np.full((height, width), -np.inf, np.float32)
    face = np.full((height, width), -1, np.int64)
    drawn = sorted((k for k, result in enumerate(results) if result is not None), key=lambda k: results[k].scale)
    for k in drawn:
        vertices = results[k].vertices
        x0, y0 = (max(int(np.floor(vertices[:, axis].min())), 0) for axis in (0, 1))
        x1 = min(int(np.ceil(vertices[:, 0].max())), width)
        y1 = min(int(np.ceil(vertices[:, 1].max())), height)
        if x1 <= x0 or y1 <= y0:
            continue
        shifted = torch.from_numpy(vertices - np.array([x0, y0, 0.0])).float()[None]
        render = render_pncc(model, shifted, y1 - y0, x1 - x0)
        mask = render.mask[0].numpy()
        pncc[y0:y1, x0:x1][mask] = render.pncc[0].numpy()[mask]
        depth[y0:y1, x0:x1][mask] = render.depth[0].numpy()[mask]
        face[y0:y1, x0:x1][mask] = k
    return FaceMaps(pncc=pncc, depth=depth, face=face)


def _as_rgb(image) -> np.ndarray:
    """A path, a PIL image or an array (any layout ``load_image`` reads: RGB, grey, RGBA, 16-bit, float in
    [0, 1]) as an (H, W, 3) uint8 RGB array, read as ``load_image`` reads it; an RGB uint8 array as it is."""
    if not isinstance(image, str | Path | Image.Image):
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
            return image
    return load_image(image)
