"""The CPR aligner's regressors (paper §2.3, Eq. 4; Fig. 4b) and round one of parameter updating.

Per parameter group a ``CPRRegressor``: a CNN reads the group's CPR difference (3 channels of C/2 × C/2),
its sixth layer (a fully connected layer: the crossing point of the fusion of Fig. 4c) feeds a GRU cell whose
hidden state persists across the Q stages of a round, and a linear layer gives the group's update Δ.

A stage updates, in the order of the weak-perspective projection (DESIGN.md), each step rebuilding Y^G from
the current parameters:

| group | network input | update |
| --- | --- | --- |
| α (identity and expression) | Λrxy^G − Λrxy^O | α += Δ (expression weights clamped to [0, 1]) |
| [rx, ry] | Λrxy^G − Λrxy^O | += Δ (radians) |
| rz | ``rotation_z_input`` (cprfa.cpr.kernels: the tabled Λrz cannot see in-plane turns) | += Δ |
| s | Λs^G / Λs^O | s ← s · exp(Δ) |
| [tx, ty] | closed form | += mean of Λt's entries over observed pairs (paper §3.2) |

The scale step is multiplicative, a choice the paper leaves open: it is Eq. 4's additive step to first order
around s = 1 and makes the network's task independent of the face's size. Round one has β = 1.

Everything happens in the normalized frame (cprfa.cpr.frame), starting from p0 = [0, 0, 0, 1, 0, 0], α0 = 0.
In eval mode no layer depends on the batch, so a face gets the same result alone or in a batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cprfa.cpr.kernels import (
    gather_channels,
    rotation_xy_cpr,
    rotation_z_input,
    scale_cpr,
    scale_ratio,
    translation_step,
)
from cprfa.errors import ModelFileError
from cprfa.model.face_model import FaceModel, default_face_model
from cprfa.model.projection import ParamLayout, project
from cprfa.weights import read_weights

GROUPS = ("alpha", "rotation_xy", "rotation_z", "scale")


@dataclass(frozen=True)
class CPRConfig:
    """Network sizes: conv widths of the CNN, the width of its sixth (fully connected) layer and of the GRU."""

    widths: tuple[int, ...] = (8, 16, 32, 64, 128)
    hidden: int = 256
    stages: int = 3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CPRConfig:
        return cls(tuple(values["widths"]), int(values["hidden"]), int(values["stages"]))


class CPRRegressor(nn.Module):
    """Fig. 4b: a CNN on a (3, n, n) CPR, its sixth layer fully connected, then a GRU cell and a linear output.

    The first convolution has stride 4 (4 × 4 blocks of vertex pairs), the next ones stride 2, then an average
    pool to 4 × 4 keeps the layout of the channel order, so any C works. Each convolution is batch-normalized
    with statistics of its own stage (the inputs of stage 1 and stage 3 differ in size by an order of
    magnitude): without normalization the regressors learned several times slower, and a per-face
    normalization (group norm) erases the magnitudes that carry scale, roll and shape. In eval mode the
    normalization is a fixed affine map, so a face gets the same result alone or in a batch."""

    def __init__(self, outputs: int, config: CPRConfig = CPRConfig()):
        super().__init__()
        convolutions, channels = [], 3
        for index, width in enumerate(config.widths):
            kernel, stride, padding = (4, 4, 0) if index == 0 else (3, 2, 1)
            convolutions.append(nn.Conv2d(channels, width, kernel, stride, padding, bias=False))
            channels = width
        self.convolutions = nn.ModuleList(convolutions)
        self.norms = nn.ModuleList(nn.ModuleList(nn.BatchNorm2d(width) for width in config.widths)
                                   for _ in range(config.stages))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.sixth = nn.Sequential(nn.Linear(16 * channels, config.hidden), nn.ReLU(inplace=True))
        self.cell = nn.GRUCell(config.hidden, config.hidden)
        self.out = nn.Linear(config.hidden, outputs)
        nn.init.zeros_(self.out.bias)

    def features(self, cpr: torch.Tensor, stage: int) -> torch.Tensor:
        """The sixth layer's output. Shape: (B, 3, n, n) -> (B, hidden)."""
        x = cpr
        for convolution, norm in zip(self.convolutions, self.norms[stage], strict=True):
            x = torch.relu(norm(convolution(x)))
        return self.sixth(self.pool(x))

    def forward(self, cpr: torch.Tensor, state: torch.Tensor | None, stage: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Δ and the next hidden state at ``stage`` (0-based). Shape: cpr (B, 3, n, n), state (B, hidden) or
        None -> (B, outputs), (B, hidden)."""
        state = self.cell(self.features(cpr, stage), state)
        return self.out(state), state


@dataclass(frozen=True)
class Step:
    """One update of a round: which group, and the parameters after it (B, P), normalized frame."""

    group: str
    params: torch.Tensor


class CPRAligner(nn.Module):
    """The four regressors of round one with the face model's selected vertices.

    ``forward(observed, detected)`` runs round one from p0 and returns every step, so training can put a loss
    on each. Observed points are the selected vertices' positions in the normalized frame."""

    def __init__(self, model: FaceModel, channels: torch.Tensor, config: CPRConfig = CPRConfig()):
        super().__init__()
        self.config = config
        self.layout = ParamLayout.of(model)
        self.n_vertices = model.n_vertices
        channels = torch.as_tensor(channels, dtype=torch.long)
        self.register_buffer("channels", channels, persistent=False)
        tensors = model.torch_tensors()
        ids = channels.reshape(-1)
        self.register_buffer("mean", tensors["mean"][ids], persistent=False)  # (K·n, 3)
        self.register_buffer("basis", tensors["basis"][ids], persistent=False)  # (K·n, 3, |α|)
        n_alpha = self.layout.n_identity + self.layout.n_expression
        self.regressors = nn.ModuleDict({"alpha": CPRRegressor(n_alpha, config),
                                         "rotation_xy": CPRRegressor(2, config),
                                         "rotation_z": CPRRegressor(1, config),
                                         "scale": CPRRegressor(1, config)})

    def generated(self, params: torch.Tensor) -> torch.Tensor:
        """Y^G of the selected vertices. Shape: params (B, P) -> (B, K, n, 2)."""
        alpha = params[:, self.layout.alpha]
        shape = self.mean + torch.einsum("vck,bk->bvc", self.basis, alpha)
        points = project(shape, params[:, :6])[..., :2]
        return points.reshape(len(params), *self.channels.shape, 2)

    def forward(self, observed: torch.Tensor, detected: torch.Tensor, params: torch.Tensor | None = None,
                detach: bool = True) -> list[Step]:
        """Round one (β = 1): Q stages of α → [rx, ry] → rz → s → t.

        ``detach`` stops gradients between steps (training: each regressor learns from its own step; the GRU
        states still carry gradients across stages). Shape: observed (B, K, n, 2), detected (B, K, n) ->
        a list of 5·Q steps."""
        if params is None:
            params = self.layout.initial(len(observed), observed.dtype).to(observed.device)
        rxy_observed = rotation_xy_cpr(observed, detected)  # the observed CPRs do not change within a round
        scale_observed = scale_cpr(observed, detected)
        states = dict.fromkeys(GROUPS)
        n_identity = self.layout.n_identity
        steps = []
        for stage in range(self.config.stages):
            for group in GROUPS:
                params = params.detach() if detach else params
                generated = self.generated(params)
                if group in ("alpha", "rotation_xy"):
                    cpr = rotation_xy_cpr(generated, detected) - rxy_observed
                elif group == "rotation_z":
                    cpr = rotation_z_input(generated, observed, detected)
                else:
                    cpr = scale_ratio(scale_cpr(generated, detected), scale_observed)
                delta, states[group] = self.regressors[group](cpr, states[group], stage)
                if group == "alpha":
                    identity = params[:, self.layout.identity] + delta[:, :n_identity]
                    expression = (params[:, self.layout.expression] + delta[:, n_identity:]).clamp(0.0, 1.0)
                    updated = torch.cat([params[:, :6], identity, expression], dim=1)
                elif group == "rotation_xy":
                    updated = torch.cat([params[:, :2] + delta, params[:, 2:]], dim=1)
                elif group == "rotation_z":
                    updated = torch.cat([params[:, :2], params[:, 2:3] + delta, params[:, 3:]], dim=1)
                else:
                    updated = torch.cat([params[:, :3], params[:, 3:4] * torch.exp(delta), params[:, 4:]], dim=1)
                steps.append(Step(group, updated))
                params = updated
            shift = translation_step(observed, self.generated(params.detach() if detach else params), detected)
            params = torch.cat([params[:, :4], params[:, 4:6] + shift, params[:, 6:]], dim=1)
            steps.append(Step("translation", params))
        return steps


def select_observed(points: torch.Tensor, detected: torch.Tensor, channels: torch.Tensor):
    """Per-vertex observations in channel order. Shape: points (B, N, 2), detected (B, N), channels (K, n) ->
    (B, K, n, 2), (B, K, n)."""
    channels = torch.as_tensor(channels, dtype=torch.long)
    return gather_channels(points, channels), gather_channels(detected, channels)


WEIGHTS_FORMAT = "cprfa-cpr"
WEIGHTS_VERSION = 1
DEFAULT_WEIGHTS = Path(__file__).parent / "assets" / "cpr.pt"


def save_aligner(aligner: CPRAligner, path: str | Path) -> None:
    """Weights (float16), config and the vertex selection's channels in one file, written atomically."""
    state = {key: value.half() if value.is_floating_point() else value
             for key, value in aligner.regressors.state_dict().items()}
    path = Path(path)
    torch.save({"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "config": aligner.config.to_dict(),
                "channels": aligner.channels.cpu(), "n_vertices": aligner.n_vertices, "state_dict": state},
               path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def load_aligner(path: str | Path | None = None, model: FaceModel | None = None) -> CPRAligner:
    """The CPR aligner from a weights file (default: the shipped one), in eval mode on the CPU."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    content = read_weights(path, WEIGHTS_FORMAT, WEIGHTS_VERSION, "CPR")
    model = model or default_face_model()
    if content.get("n_vertices") != model.n_vertices:
        raise ModelFileError(f"{path} was trained for a face model of {content.get('n_vertices')} vertices, "
                             f"not {model.n_vertices}")
    try:
        aligner = CPRAligner(model, content["channels"], CPRConfig.from_dict(content["config"]))
        aligner.regressors.load_state_dict({key: value.float() if value.is_floating_point() else value
                                            for key, value in content["state_dict"].items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: weights do not match the CPR aligner ({error})") from None
    return aligner.eval()


@torch.inference_mode()
def align_point_sets(aligner: CPRAligner, points: torch.Tensor, detected: torch.Tensor) -> torch.Tensor:
    """Round one on observed point sets over all model vertices, normalized frame.

    Shape: points (B, N, 2), detected (B, N) -> params (B, P)."""
    observed, seen = select_observed(points.float(), detected, aligner.channels)
    return aligner(observed, seen)[-1].params
