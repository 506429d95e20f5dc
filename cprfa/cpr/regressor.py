"""The CPR aligner (paper §2.3–2.5; Eq. 4, 5, 8; Fig. 4b, 4c): regressors, both rounds of parameter updating
and the fusion with sparse landmarks.

Per parameter group a ``CPRRegressor``: a CNN reads the group's CPR difference (3 channels of C/2 × C/2),
its sixth layer (a fully connected layer) feeds a GRU cell whose hidden state persists across the stages,
and a linear layer gives the group's update Δ.

A stage updates, in the order of the weak-perspective projection (DESIGN.md), each step rebuilding Y^G from
the current parameters:

| group | network input | update |
| --- | --- | --- |
| α (identity and expression) | Λrxy^G − Λrxy^O | α += Δ (expression weights clamped to [0, 1]) |
| [rx, ry] | Λrxy^G − Λrxy^O | += β·Δ (radians) |
| rz | ``rotation_z_input`` (cprfa.cpr.kernels: the tabled Λrz cannot see in-plane turns) | += β·Δ |
| s | Λs^G / Λs^O | s ← s · exp(β·Δ) |
| [tx, ty] | closed form | += mean of Λt's entries over observed pairs (paper §3.2) |

The scale step is multiplicative, a choice the paper leaves open: it is Eq. 4's additive step to first order
around s = 1 and makes the network's task independent of the face's size.

Rounds: round one runs Q stages with β = 1; round two runs Q more stages of the pose groups (α stays), the
same regressors going on with their GRU states (each stage has its own batch-norm statistics), and β from
consistency-aware updating (cprfa.cpr.consistency), one β network per pose group and branch.

Fusion (``CPRConfig.fusion``): every group has a second regressor on the 68 sparse landmarks (CPR-C2,
cprfa.cpr.sparse); the two CNNs exchange features at their sixth layer (``Crossing``), each branch predicts
its own Δ (and in round two its own β), and the update is β_C1·Δ_C1 + β_C2·Δ_C2 (Eq. 8). A face without a
sparse source gets nothing from that branch.

Everything happens in the normalized frame (cprfa.cpr.frame), starting from p0 = [0, 0, 0, 1, 0, 0], α0 = 0.
In eval mode no layer depends on the batch, so a face gets the same result alone or in a batch.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cprfa.cpr.consistency import ConsistencyWeight, error_pool, path_multipliers, pool_order, residual_error
from cprfa.cpr.kernels import (
    gather_channels,
    inverse_scale,
    pair_mask,
    rotation_xy_cpr,
    rotation_xy_mask,
    rotation_z_input,
    scale_cpr,
    scale_ratio,
    translation_step,
)
from cprfa.cpr.sparse import N_LANDMARKS, landmark_channels
from cprfa.errors import InvalidInputError, ModelFileError
from cprfa.model.contour import contour_lines, silhouette_choice
from cprfa.model.face_model import FaceModel, default_face_model
from cprfa.model.projection import ParamLayout, linear_shape, model_shape, modes_first, weak_perspective
from cprfa.weights import read_weights

GROUPS = ("alpha", "rotation_xy", "rotation_z", "scale")
POSE_GROUPS = GROUPS[1:]  # round two leaves α alone (paper §2.3)


@dataclass(frozen=True)
class CPRConfig:
    """Network sizes and the method's settings.

    widths: conv widths of the DAFI branch's CNN; hidden: width of the sixth (fully connected) layer and of
    the GRU; stages: Q per round; rounds: 1 (β = 1) or 2 (round two with consistency-aware updating);
    fusion: a CPR-C2 branch on 68 sparse landmarks (cprfa.cpr.sparse) with CNN widths ``sparse_widths``;
    path_samples: M of CAPU's path; kappa: the share of detected DAFI vertices in CAPU's error pool;
    sixth_slope: the negative slope of the sixth layer's activation (0: a ReLU); scale_ratio_max: the cap on
    the scale regressor's input (cprfa.cpr.kernels). Weights written before the last two existed ran a ReLU
    and no cap, and load so: that ReLU took post-ReLU (positive) inputs, and in the shipped fused network's
    training 89–100 % of the sixth-layer units of each DAFI-branch regressor (and 84–100 % of the landmark
    branch's) ended below zero for every input, which left its round one without landmarks at 11.8 % on the
    occluded synthetic set; a leaky slope keeps a gradient on every unit."""

    widths: tuple[int, ...] = (8, 16, 32, 64, 128)
    hidden: int = 256
    stages: int = 3
    rounds: int = 1
    fusion: bool = False
    sparse_widths: tuple[int, ...] = (16, 32, 64)
    path_samples: int = 5
    kappa: float = 0.1
    sixth_slope: float = 0.1
    scale_ratio_max: float = 4.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CPRConfig:
        defaults = cls()
        return cls(tuple(values["widths"]), int(values["hidden"]), int(values["stages"]),
                   int(values.get("rounds", defaults.rounds)), bool(values.get("fusion", defaults.fusion)),
                   tuple(values.get("sparse_widths", defaults.sparse_widths)),
                   int(values.get("path_samples", defaults.path_samples)),
                   float(values.get("kappa", defaults.kappa)), float(values.get("sixth_slope", 0.0)),
                   float(values.get("scale_ratio_max", math.inf)))


class CPRRegressor(nn.Module):
    """Fig. 4b: a CNN on a (3, n, n) CPR, its sixth layer fully connected, then a GRU cell and a linear output.

    The first convolution has stride 4 (4 × 4 blocks of vertex pairs), the next ones stride 2, then an average
    pool to 4 × 4 keeps the layout of the channel order, so any C works. Each convolution is batch-normalized
    with statistics of its own stage (the inputs of stage 1 and stage 3 differ in size by an order of
    magnitude): without normalization the regressors learned several times slower, and a per-face
    normalization (group norm) erases the magnitudes that carry scale, roll and shape. In eval mode the
    normalization is a fixed affine map, so a face gets the same result alone or in a batch."""

    def __init__(self, outputs: int, widths: tuple[int, ...], hidden: int, stages: int, slope: float = 0.0):
        super().__init__()
        convolutions, channels = [], 3
        for index, width in enumerate(widths):
            kernel, stride, padding = (4, 4, 0) if index == 0 else (3, 2, 1)
            convolutions.append(nn.Conv2d(channels, width, kernel, stride, padding, bias=False))
            channels = width
        self.convolutions = nn.ModuleList(convolutions)
        self.norms = nn.ModuleList(nn.ModuleList(nn.BatchNorm2d(width) for width in widths) for _ in range(stages))
        activation = nn.LeakyReLU(slope, inplace=True) if slope else nn.ReLU(inplace=True)
        self.sixth = nn.Sequential(nn.Linear(16 * channels, hidden), activation)
        self.cell = nn.GRUCell(hidden, hidden)
        self.out = nn.Linear(hidden, outputs)
        nn.init.zeros_(self.out.bias)
        self.folded: nn.ModuleList | None = None  # per stage, the convolutions with their norms (fold_norms)

    def features(self, cpr: torch.Tensor, stage: int) -> torch.Tensor:
        """The sixth layer's output. Shape: (B, 3, n, n) -> (B, hidden)."""
        x = cpr
        for index, convolution in enumerate(self.convolutions):
            if self.folded is not None:
                x = self.folded[stage][index](x)
            else:
                x = self.norms[stage][index](convolution(x))
            x = torch.relu(x)
        return self.sixth(average_pool(x, 4).flatten(1))

    def fold_norms(self) -> None:
        """For inference: each stage's eval-mode batch norms folded into copies of the convolutions, which
        ``features`` then runs (the same result, the CNN in about half the time at batch 1); ``train()`` drops
        them."""
        folded = []
        for stage in range(len(self.norms)):
            layers = []
            for index, convolution in enumerate(self.convolutions):
                scale, shift = (value[stage].detach() for value in self.stage_affine(index))
                layer = nn.Conv2d(convolution.in_channels, convolution.out_channels, convolution.kernel_size,
                                  convolution.stride, convolution.padding)
                layer.weight.data = convolution.weight.detach() * scale[:, None, None, None]
                layer.bias.data = shift
                layers.append(layer)
            folded.append(nn.ModuleList(layers))
        self.folded = nn.ModuleList(folded).requires_grad_(False)

    def train(self, mode: bool = True) -> CPRRegressor:
        if mode:
            self.folded = None
        return super().train(mode)

    def stage_affine(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode batch norms of convolution ``index`` as x·scale + shift, per stage.
        Shape: -> (stages, width) twice."""
        norms = [stage_norms[index] for stage_norms in self.norms]
        scale = torch.stack([norm.weight / torch.sqrt(norm.running_var + norm.eps) for norm in norms])
        mean = torch.stack([norm.running_mean for norm in norms])
        return scale, torch.stack([norm.bias for norm in norms]) - mean * scale

    def recur(self, features: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Δ and the next hidden state. Shape: features (B, hidden), state (B, hidden) or None -> (B, outputs),
        (B, hidden)."""
        state = self.cell(features, state)
        return self.out(state), state


def average_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """Adaptive average pooling to size × size as two products with pooling matrices (the same windows as
    torch's adaptive pooling; written out so that ONNX can export any input size).
    Shape: (B, C, H, W) -> (B, C, size, size)."""
    height, width = int(x.shape[2]), int(x.shape[3])
    if height == width == size:
        return x
    return _pooling_matrix(height, size).to(x) @ x @ _pooling_matrix(width, size).to(x).T


@functools.cache
def _pooling_matrix(length: int, size: int) -> torch.Tensor:
    """(size, length): row i averages the window of adaptive pooling's output i. (A normal tensor even when first
    asked for in inference mode, so that training and export can use it too.)"""
    with torch.inference_mode(False):
        matrix = torch.zeros(size, length)
        for i in range(size):
            start, end = i * length // size, ((i + 1) * length + size - 1) // size
            matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class Crossing(nn.Module):
    """Fig. 4c: the sixth layers of CPR-C1 (DAFI) and CPR-C2 (sparse landmarks) exchange features; each
    branch adds a learned linear map of the other's. The maps start at zero (the branches start independent)
    and the sparse side has no bias, so a face without a sparse source (its features zeroed) gets nothing
    from it."""

    def __init__(self, hidden: int):
        super().__init__()
        self.from_sparse = nn.Linear(hidden, hidden, bias=False)
        self.from_dense = nn.Linear(hidden, hidden)
        for layer in (self.from_sparse, self.from_dense):
            nn.init.zeros_(layer.weight)
        nn.init.zeros_(self.from_dense.bias)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor, present: torch.Tensor):
        """Shape: dense, sparse (B, hidden), present (B,) -> (B, hidden) twice."""
        sparse = sparse * present[:, None]
        return dense + self.from_sparse(sparse), (sparse + self.from_dense(dense)) * present[:, None]


@dataclass(frozen=True, eq=False)
class AlignerInput:
    """What the aligner reads, in the normalized frame (make it with ``aligner_input``).

    observed (B, K, n, 2), detected (B, K, n): the selected DAFI vertices in channel order;
    pool_ids (B, E), pool_points (B, E, 2), pool_weight (B, E): CAPU's error pool (cprfa.cpr.consistency);
    landmarks (B, 3, 68, 2), landmark_given (B, 3, 68): the sparse source in its channels (all False for a face
    without one)."""

    observed: torch.Tensor
    detected: torch.Tensor
    pool_ids: torch.Tensor
    pool_points: torch.Tensor
    pool_weight: torch.Tensor
    landmarks: torch.Tensor
    landmark_given: torch.Tensor

    def __len__(self) -> int:
        return len(self.observed)

    def __getitem__(self, index) -> AlignerInput:
        return AlignerInput(*(value[index] for value in vars(self).values()))

    def to(self, device) -> AlignerInput:
        return AlignerInput(*(value.to(device) for value in vars(self).values()))

    @property
    def present(self) -> torch.Tensor:
        """(B,) whether a face has a sparse source."""
        return self.landmark_given.flatten(1).any(dim=1)


def aligner_input(points: torch.Tensor, detected: torch.Tensor, channels: torch.Tensor, kappa: float = 0.1,
                  landmarks: torch.Tensor | None = None, landmark_given: torch.Tensor | None = None,
                  order: torch.Tensor | None = None) -> AlignerInput:
    """The aligner's input from per-vertex observations and an optional sparse source.

    Shape: points (B, N, 2), detected (B, N) over all model vertices, channels (K, n); landmarks (B, 68, 2),
    landmark_given (B, 68) (None: no source; given defaults to all points) -> AlignerInput."""
    points = points.float()
    observed, seen = select_observed(points, detected, channels)
    order = pool_order(points.shape[1]) if order is None else order
    pool = error_pool(points, detected, kappa, order)
    if landmarks is None:
        landmarks = points.new_zeros(len(points), N_LANDMARKS, 2)
        landmark_given = torch.zeros(len(points), N_LANDMARKS, dtype=torch.bool)
    elif landmark_given is None:
        landmark_given = torch.ones(landmarks.shape[:2], dtype=torch.bool)
    sparse_channels = landmark_channels()
    return AlignerInput(observed, seen, *pool, gather_channels(landmarks.float(), sparse_channels),
                        gather_channels(landmark_given.bool(), sparse_channels))


@dataclass(frozen=True)
class Step:
    """One update: which group, in which round (1 or 2), the parameters after it (B, P) in the normalized frame,
    and the weights β of its branches (B, 1 or 2: DAFI, then sparse; 1 in round one; None for translation)."""

    group: str
    params: torch.Tensor
    round: int = 1
    beta: torch.Tensor | None = None


class CPRAligner(nn.Module):
    """The CPR aligner: per group a regressor on the DAFI's selected vertices (CPR-C1) and, with fusion, one on
    the sparse landmarks (CPR-C2) crossing it at the sixth layer; with two rounds, CAPU's β networks.

    ``forward(inputs)`` runs the rounds from p0 and returns every step, so training can put a loss on each."""

    def __init__(self, model: FaceModel, channels: torch.Tensor, config: CPRConfig = CPRConfig()):
        super().__init__()
        self.config = config
        self.model = model
        self.layout = ParamLayout.of(model)
        self.n_vertices = model.n_vertices
        channels = torch.as_tensor(channels, dtype=torch.long)
        self.register_buffer("channels", channels, persistent=False)
        tensors = model.torch_tensors()
        ids = channels.reshape(-1)
        self.register_buffer("mean", tensors["mean"][ids], persistent=False)  # (K·n, 3)
        self.register_buffer("basis", modes_first(tensors["basis"][ids]), persistent=False)  # (K·n, 3, |α|)
        self.register_buffer("sparse_channels", landmark_channels(), persistent=False)
        # the 68 landmark vertices and the jaw's contour candidates, as rows of one small vertex set
        self.contours = contour_lines(model)
        sparse_ids = np.unique(np.concatenate([model.landmarks68, self.contours.vertex_ids.ravel()]))
        self.register_buffer("sparse_mean", tensors["mean"][sparse_ids], persistent=False)
        self.register_buffer("sparse_basis", modes_first(tensors["basis"][sparse_ids]), persistent=False)
        self.register_buffer("landmark_rows", torch.from_numpy(np.searchsorted(sparse_ids, model.landmarks68)),
                             persistent=False)
        self.register_buffer("contour_rows", torch.from_numpy(np.searchsorted(sparse_ids, self.contours.vertex_ids)),
                             persistent=False)
        self.register_buffer("jaw_landmarks", torch.as_tensor(self.contours.landmarks), persistent=False)
        self.register_buffer("outward", torch.as_tensor(self.contours.outward), persistent=False)
        self.register_buffer("multipliers", path_multipliers(config.path_samples), persistent=False)
        self.runtime = None  # what runs ``align_point_sets`` instead of this forward (cprfa.cpr.onnx.OnnxAligner)
        outputs = {"alpha": self.layout.n_identity + self.layout.n_expression, "rotation_xy": 2, "rotation_z": 1,
                   "scale": 1}
        stages = config.rounds * config.stages
        self.regressors = nn.ModuleDict({
            group: CPRRegressor(outputs[group], config.widths, config.hidden, stages, config.sixth_slope)
            for group in GROUPS})
        if config.rounds > 1:
            self.consistency = nn.ModuleDict({group: ConsistencyWeight(config.path_samples)
                                              for group in POSE_GROUPS})
        if config.fusion:
            self.sparse_regressors = nn.ModuleDict({
                group: CPRRegressor(outputs[group], config.sparse_widths, config.hidden, stages, config.sixth_slope)
                for group in GROUPS})
            for regressor in self.sparse_regressors.values():  # the sparse branch starts with no say
                nn.init.zeros_(regressor.out.weight)
            self.crossings = nn.ModuleDict({group: Crossing(config.hidden) for group in GROUPS})
            if config.rounds > 1:
                self.sparse_consistency = nn.ModuleDict({group: ConsistencyWeight(config.path_samples)
                                                         for group in POSE_GROUPS})

    def fused(self) -> CPRAligner:
        """A copy for inference that computes the same with every regressor's batch norms folded into its
        convolutions (``CPRRegressor.fold_norms``)."""
        fused = copy.deepcopy(self).eval()
        for regressors in (fused.regressors, getattr(fused, "sparse_regressors", {})):
            for regressor in regressors.values():
                regressor.fold_norms()
        return fused

    def shapes(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Model-space shapes under ``params``' α of the selected vertices, of the 68 landmark vertices and of the
        jaw's contour candidates (cprfa.model.contour); they change only with α, so an alignment computes them
        once per α step. Shape: params (B, P) -> (B, K·n, 3), (B, 68, 3), (B, 16, L, 3)."""
        alpha = params[:, self.layout.alpha]
        sparse = linear_shape(self.sparse_mean, self.sparse_basis, alpha)
        return linear_shape(self.mean, self.basis, alpha), sparse[:, self.landmark_rows], sparse[:, self.contour_rows]

    def generated(self, params: torch.Tensor, shapes: tuple | None = None) -> torch.Tensor:
        """Y^G of the selected vertices (``shapes``: ``shapes(params)`` when the caller has them).
        Shape: params (B, P) -> (B, K, n, 2)."""
        shape = (self.shapes(params) if shapes is None else shapes)[0]
        points = weak_perspective(shape, params[:, :6])[..., :2]
        return points.unflatten(1, tuple(self.channels.shape))

    def generated_landmarks(self, params: torch.Tensor, shapes: tuple | None = None) -> torch.Tensor:
        """Y^G of the sparse source: the 68 landmarks, jaw on the silhouette (cprfa.model.contour), in their
        channels (``shapes``: ``shapes(params)`` when the caller has them).
        Shape: params (B, P) -> (B, 3, 68, 2)."""
        _, landmarks, candidates = self.shapes(params) if shapes is None else shapes
        best = silhouette_choice(candidates, params, self.outward)  # (B, 16)
        jaw = torch.gather(candidates, 2, best[..., None, None].expand(-1, -1, 1, 3))[:, :, 0]  # (B, 16, 3)
        landmarks = landmarks.index_copy(1, self.jaw_landmarks, jaw)
        return gather_channels(weak_perspective(landmarks, params[:, :6])[..., :2], self.sparse_channels)

    def forward(self, inputs: AlignerInput, params: torch.Tensor | None = None, detach: bool = True,
                rounds: int | None = None, fuse: bool = True, step_jitter: float = 0.0,
                stages: int | None = None) -> list[Step]:
        """``rounds`` (default: the config's) of ``stages`` (default: the config's Q) stages of
        α → [rx, ry] → rz → s → t (α in round one only).

        ``fuse=False`` switches the sparse branch off for every face (the CPR(C) row of the ablation).
        ``detach`` stops gradients between steps (training: each regressor learns from its own step; the GRU
        states still carry gradients across stages). ``step_jitter`` J (training the β networks) scales each
        round-two Δ by exp(U(−J, J)), drawn per face, before its path is tried. Returns (4 + 1)·Q steps in
        round one, (3 + 1)·Q in two."""
        rounds, stages = self.schedule(rounds, stages)
        if params is None:
            points = inputs.observed  # its shape[0], not len(): an ONNX export traces the batch size
            params = self.layout.initial(1, points.dtype).to(points.device).expand(points.shape[0], -1)
        present = inputs.present
        fusion = self.config.fusion and fuse and bool(present.any())  # without any source: the DAFI branch alone
        present = present.to(params.dtype) if fusion else None
        cap = self.config.scale_ratio_max
        observed = {"dense": _Observed.of(inputs.observed, inputs.detected, cap)}
        if fusion:
            observed["sparse"] = _Observed.of(inputs.landmarks, inputs.landmark_given, cap)
        start = params.new_zeros(params.shape[0], self.config.hidden)  # the GRUs' initial state
        states = {name: start for group in GROUPS for name in (group, f"sparse {group}")}
        steps = []
        shapes = self.shapes(params)
        for round_index in range(rounds):
            pool_shape = None
            if round_index:
                pool_shape = model_shape(self.model, params.detach(), inputs.pool_ids)
            for stage in range(stages):
                for group in GROUPS if round_index == 0 else POSE_GROUPS:
                    params = params.detach() if detach else params
                    deltas = self._deltas(group, params, shapes, observed, states,
                                          round_index * self.config.stages + stage, present)
                    if round_index == 0:
                        betas = [torch.ones_like(delta[:, :1]) for delta in deltas]
                    else:  # the branches' paths in one batch
                        if step_jitter:
                            deltas = [delta * torch.exp(step_jitter * (2 * torch.rand_like(delta[:, :1]) - 1))
                                      for delta in deltas]
                        nets = [self.consistency[group]] + ([self.sparse_consistency[group]] if fusion else [])
                        copies = len(deltas)
                        errors, before = self._path_errors(group, params.repeat(copies, 1), torch.cat(deltas),
                                                           pool_shape.repeat(copies, 1, 1),
                                                           inputs.pool_points.repeat(copies, 1, 1),
                                                           inputs.pool_weight.repeat(copies, 1))
                        betas = [net(e, b) for net, e, b in zip(nets, errors.chunk(copies), before.chunk(copies),
                                                                strict=True)]
                    update = sum(beta * delta for beta, delta in zip(betas, deltas, strict=True))
                    params = self._updated(group, params, update)
                    if group == "alpha":
                        shapes = self.shapes(params.detach() if detach else params)
                    steps.append(Step(group, params, round_index + 1, torch.cat(betas, dim=1)))
                params = self._translate(params.detach() if detach else params, shapes, observed)
                steps.append(Step("translation", params, round_index + 1))
        return steps

    def schedule(self, rounds: int | None = None, stages: int | None = None) -> tuple[int, int]:
        """The rounds and the stages per round of an alignment (None: all the weights have), checked."""
        rounds = self.config.rounds if rounds is None else rounds
        if not 1 <= rounds <= self.config.rounds:
            raise InvalidInputError(f"these weights run 1 to {self.config.rounds} rounds, not {rounds}")
        stages = self.config.stages if stages is None else stages
        if not 1 <= stages <= self.config.stages:
            raise InvalidInputError(f"these weights run 1 to {self.config.stages} stages a round, not {stages}")
        return rounds, stages

    def _deltas(self, group, params, shapes, observed, states, stage, present) -> list[torch.Tensor]:
        """Δ of the DAFI branch and, with fusion, of the sparse branch (zero for faces without a source)."""
        cpr = observed["dense"].network_input(group, self.generated(params, shapes))
        if present is None:
            delta, states[group] = self.step_networks(group, stage, cpr, states[group])
            return [delta]
        sparse_cpr = observed["sparse"].network_input(group, self.generated_landmarks(params, shapes))
        delta, states[group], sparse_delta, states[f"sparse {group}"] = self.step_networks(
            group, stage, cpr, states[group], sparse_cpr, states[f"sparse {group}"], present)
        return [delta, sparse_delta]

    def step_networks(self, group: str, stage: int, cpr: torch.Tensor, state: torch.Tensor,
                      sparse_cpr: torch.Tensor | None = None, sparse_state: torch.Tensor | None = None,
                      present: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The networks of one step: the DAFI branch's CNN and GRU, and with a sparse input the sparse branch's,
        crossing at the sixth layer (its Δ zero for faces without a source).

        Shape: cpr (B, K, n, n), states (B, hidden), sparse_cpr (B, 3, 68, 68), present (B,) -> Δ (B, d) and
        the next state, then with a sparse input the sparse Δ and state."""
        features = self.regressors[group].features(cpr, stage)
        if sparse_cpr is None:
            return self.regressors[group].recur(features, state)
        sparse_features = self.sparse_regressors[group].features(sparse_cpr, stage)
        features, sparse_features = self.crossings[group](features, sparse_features, present)
        delta, state = self.regressors[group].recur(features, state)
        sparse_delta, sparse_state = self.sparse_regressors[group].recur(sparse_features, sparse_state)
        return delta, state, sparse_delta * present[:, None], sparse_state

    def _updated(self, group: str, params: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The parameters after a step Δ of ``group``. Shape: (B, P), (B, d) -> (B, P)."""
        if group == "alpha":
            n_identity = self.layout.n_identity
            identity = params[:, self.layout.identity] + delta[:, :n_identity]
            expression = (params[:, self.layout.expression] + delta[:, n_identity:]).clamp(0.0, 1.0)
            return torch.cat([params[:, :6], identity, expression], dim=1)
        if group == "rotation_xy":
            return torch.cat([params[:, :2] + delta, params[:, 2:]], dim=1)
        if group == "rotation_z":
            return torch.cat([params[:, :2], params[:, 2:3] + delta, params[:, 3:]], dim=1)
        return torch.cat([params[:, :3], params[:, 3:4] * torch.exp(delta), params[:, 4:]], dim=1)

    @torch.no_grad()
    def _path_errors(self, group: str, params: torch.Tensor, delta: torch.Tensor, pool_shape: torch.Tensor,
                     pool_points: torch.Tensor, pool_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CAPU's errors along the path (cprfa.cpr.consistency) and before the step, for k copies of the batch
        (one per branch). Shape: params (k·B, P), delta (k·B, d), pool_shape (k·B, E, 3), pool_points (k·B, E, 2),
        pool_weight (k·B, E) -> (k·B, 2M), (k·B,)."""
        samples = len(self.multipliers)
        path = (self.multipliers[:, None, None] * delta).flatten(0, 1)
        poses = torch.cat([params[:, :6], self._updated(group, params.repeat(samples, 1), path)[:, :6]])
        points = weak_perspective(pool_shape.repeat(samples + 1, 1, 1), poses)[..., :2]
        errors = residual_error(points.unflatten(0, (samples + 1, -1)), pool_points, pool_weight)
        return errors[1:].T, errors[0]

    def _translate(self, params: torch.Tensor, shapes, observed: dict[str, _Observed]) -> torch.Tensor:
        """The closed-form translation step over every observed point (DAFI vertices and, with fusion, the
        sparse landmarks)."""
        points, detected = observed["dense"].points, observed["dense"].detected
        generated = self.generated(params, shapes)
        if "sparse" in observed:
            points = torch.cat([points, observed["sparse"].points], dim=2)
            detected = torch.cat([detected, observed["sparse"].detected], dim=2)
            generated = torch.cat([generated, self.generated_landmarks(params, shapes)], dim=2)
        shift = translation_step(points, generated, detected)
        return torch.cat([params[:, :4], params[:, 4:6] + shift, params[:, 6:]], dim=1)


@dataclass(frozen=True, eq=False)
class _Observed:
    """One branch's observed set and what stays fixed while it is aligned: its masks and CPRs.

    points (B, K, n, 2), detected (B, K, n); pairs, rxy_valid (B, K, n, n) as 0/1 of the points' dtype;
    rxy, inverse_scale (B, K, n, n) the observed Λrxy and 1 / Λs (cprfa.cpr.kernels.inverse_scale); scale_cap:
    the cap on the scale input (CPRConfig.scale_ratio_max)."""

    points: torch.Tensor
    detected: torch.Tensor
    pairs: torch.Tensor
    rxy_valid: torch.Tensor
    rxy: torch.Tensor
    inverse_scale: torch.Tensor
    scale_cap: float

    @classmethod
    def of(cls, points: torch.Tensor, detected: torch.Tensor, scale_cap: float) -> _Observed:
        pairs = pair_mask(detected).to(points.dtype)
        rxy_valid = rotation_xy_mask(detected).to(points.dtype)
        return cls(points, detected, pairs, rxy_valid, rotation_xy_cpr(points, detected, rxy_valid),
                   inverse_scale(scale_cpr(points, detected, pairs)), scale_cap)

    def network_input(self, group: str, generated: torch.Tensor) -> torch.Tensor:
        """A group's network input (module docstring). Shape: generated (B, K, n, 2) -> (B, K, n, n)."""
        if group in ("alpha", "rotation_xy"):
            difference = rotation_xy_cpr(generated, self.detected, self.rxy_valid)
            return difference - self.rxy if difference.requires_grad else difference.sub_(self.rxy)
        if group == "rotation_z":
            return rotation_z_input(generated, self.points, self.detected, self.pairs)
        return scale_ratio(scale_cpr(generated, self.detected, self.pairs), self.inverse_scale, self.scale_cap)


def select_observed(points: torch.Tensor, detected: torch.Tensor, channels: torch.Tensor):
    """Per-vertex observations in channel order. Shape: points (B, N, 2), detected (B, N), channels (K, n) ->
    (B, K, n, 2), (B, K, n)."""
    channels = torch.as_tensor(channels, dtype=torch.long)
    return gather_channels(points, channels), gather_channels(detected, channels)


WEIGHTS_FORMAT = "cprfa-cpr"
WEIGHTS_VERSION = 3  # 1: round one alone, without the "regressors." prefix; 2: all float16; 3: int8 matrices
DEFAULT_WEIGHTS = Path(__file__).parent / "assets" / "cpr.pt"
DAFI_ONLY_WEIGHTS = Path(__file__).parent / "assets" / "cpr512.pt"  # round one without a sparse branch: CPR(512)
INT8_MIN_SIZE = 4096  # smaller tensors (biases, norms, first convolutions) stay float16


def save_aligner(aligner: CPRAligner, path: str | Path) -> None:
    """Weights, config and the vertex selection's channels in one file, written atomically. Weight matrices of
    INT8_MIN_SIZE entries or more are stored as int8 with one float scale per output row (symmetric); the
    rest as float16. This halves the file; the parameters change by at most half a step of their row's scale."""
    state = {key: _encoded(value) for key, value in aligner.state_dict().items()}
    path = Path(path)
    torch.save({"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "config": aligner.config.to_dict(),
                "channels": aligner.channels.cpu(), "n_vertices": aligner.n_vertices, "state_dict": state},
               path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def _encoded(value: torch.Tensor):
    if not value.is_floating_point():
        return value
    if value.dim() < 2 or value.numel() < INT8_MIN_SIZE:
        return value.half()
    rows = value.detach().float().reshape(len(value), -1)
    scale = (rows.abs().amax(dim=1) / 127).clamp(min=1e-12)
    return {"int8": torch.round(rows / scale[:, None]).to(torch.int8).reshape(value.shape), "scale": scale}


def _decoded(value) -> torch.Tensor:
    if isinstance(value, dict):
        quantized = value["int8"].float()
        return (quantized.reshape(len(quantized), -1) * value["scale"][:, None].float()).reshape(quantized.shape)
    return value.float() if value.is_floating_point() else value


def load_aligner(path: str | Path | None = None, model: FaceModel | None = None) -> CPRAligner:
    """The CPR aligner from a weights file (default: the shipped one), in eval mode on the CPU."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    content = read_weights(path, WEIGHTS_FORMAT, (1, 2, WEIGHTS_VERSION), "CPR")
    model = model or default_face_model()
    if content.get("n_vertices") != model.n_vertices:
        raise ModelFileError(f"{path} was trained for a face model of {content.get('n_vertices')} vertices, "
                             f"not {model.n_vertices}")
    try:
        state = content["state_dict"]
        if content["version"] == 1:
            state = {f"regressors.{key}": value for key, value in state.items()}
        aligner = CPRAligner(model, content["channels"], CPRConfig.from_dict(content["config"]))
        aligner.load_state_dict({key: _decoded(value) for key, value in state.items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: weights do not match the CPR aligner ({error})") from None
    return aligner.eval()


@torch.inference_mode()
def align_point_sets(aligner: CPRAligner, points: torch.Tensor, detected: torch.Tensor,
                     landmarks: torch.Tensor | None = None, landmark_given: torch.Tensor | None = None,
                     rounds: int | None = None, stages: int | None = None) -> torch.Tensor:
    """The aligner on observed point sets over all model vertices and an optional sparse source, normalized
    frame (``rounds`` and ``stages`` per round: CPRAligner.forward), run by the aligner's ``runtime`` when it has
    one (cprfa.cpr.onnx.OnnxAligner). Shape: points (B, N, 2), detected (B, N), landmarks (B, 68, 2),
    landmark_given (B, 68) -> params (B, P)."""
    inputs = aligner_input(points, detected, aligner.channels, aligner.config.kappa, landmarks, landmark_given)
    if aligner.runtime is not None:
        return aligner.runtime(inputs, rounds, stages)
    return aligner(inputs, rounds=rounds, stages=stages)[-1].params
