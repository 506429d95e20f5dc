"""On-line fitting of the face model to 2D point correspondences (paper Fig. 1a), batched.

Projected Levenberg–Marquardt on the whole parameter vector ``[pose, α_id, α_exp]`` minimizing

    Σ_i w_i ρ(‖proj(X_{v_i}) − y_i‖ / d) + λ_id ‖α_id‖² + λ_exp ‖α_exp‖²

where ``d = sqrt(w·h)`` of the target points' box makes the data term independent of image size, ρ is the
squared distance or a robust loss (Huber, Geman–McClure; applied by iteratively reweighting), and blendshape
expressions are kept in [0, 1] by projecting every step. ``vertex_for`` chooses the model vertex of each
target point at every iteration, which is how the silhouette jaw landmarks follow the pose; a fixed
correspondence (e.g. dense DAFI vertices) simply returns the same ids. The Jacobian is analytic
(``projection_jacobian``), so a batch of faces costs a few batched matrix products per iteration.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from cprfa._checks import check_finite, check_shape
from cprfa.errors import InvalidInputError
from cprfa.model.face_model import FaceModel
from cprfa.model.projection import N_POSE, ParamLayout, elementary_rotations, model_shape, pose_from_box

ROBUST_LOSSES = ("none", "huber", "geman-mcclure")


@dataclass(frozen=True)
class FitOptions:
    """Settings of the on-line fit.

    identity_weight, expression_weight: λ of the Gaussian priors (the data term is in units of the box size).
        The defaults minimize the error on 10 landmarks per face hidden from the fit, on afw (training
        split): λ = 2e-2, 2e-3, 2e-4, 2e-5, 6e-6, 2e-6 gave 2.76, 2.37, 2.09, 1.88, 1.80, 1.80 % NME
        (benchmarks/bench_landmark_fit.py --splits afw --holdout 10); 2e-6 converges four times slower.
    iterations: LM iterations with the shape free; pose_iterations: LM iterations on the pose alone before.
    robust: "none", "huber" or "geman-mcclure"; robust_scale: its scale as a fraction of the box size.
    fit_identity, fit_expression: which coefficient groups are free (the others stay at their start value).
    damping: Levenberg–Marquardt's starting damping, a multiple of the diagonal of JᵀJ (each iteration then
        divides it by 3 after a step that lowers the cost, multiplies it by 4 after one that does not).
    dtype: what the fit computes in, torch.float64 or torch.float32 (about 1.5–1.8 times faster; the
        refinement after the CPR aligner uses it: the same NME as float64's to 10⁻⁴ % on every face of the
        afw tuning sets, README "Speed"); the parameters come back in float64 either way.
    """

    identity_weight: float = 6e-6
    expression_weight: float = 6e-6
    iterations: int = 25
    pose_iterations: int = 8
    robust: str = "none"
    robust_scale: float = 0.02
    fit_identity: bool = True
    fit_expression: bool = True
    damping: float = 1e-3
    dtype: torch.dtype = torch.float64

    def __post_init__(self) -> None:
        if self.robust not in ROBUST_LOSSES:
            raise InvalidInputError(f"robust must be one of {ROBUST_LOSSES}, got '{self.robust}'")
        if self.identity_weight < 0 or self.expression_weight < 0 or self.robust_scale <= 0:
            raise InvalidInputError("prior weights must be >= 0 and robust_scale > 0")
        if self.iterations < 0 or self.pose_iterations < 0:
            raise InvalidInputError("iteration counts must be >= 0")
        if not 0 < self.damping <= 1e7:
            raise InvalidInputError(f"damping must lie in (0, 1e7], got {self.damping}")
        if self.dtype not in (torch.float32, torch.float64):
            raise InvalidInputError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")


def box_size(points: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sqrt(w·h) of the box of the points with positive weight. Shape: (B, M, 2), (B, M) -> (B,)."""
    big = torch.finfo(points.dtype).max
    valid = (weights > 0)[..., None]
    low = torch.where(valid, points, big).amin(dim=1)
    high = torch.where(valid, points, -big).amax(dim=1)
    return torch.sqrt(((high - low).clamp(min=1e-6)).prod(dim=1))


def fit_points(
    model: FaceModel,
    points: torch.Tensor,
    vertex_for: Callable[[torch.Tensor], torch.Tensor],
    weights: torch.Tensor | None = None,
    options: FitOptions | None = None,
    initial: torch.Tensor | None = None,
    robust_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fit pose and coefficients so that the chosen vertices project onto ``points``.

    ``vertex_for(params)`` returns the vertex id of each target point, (B, M) int64. ``weights`` (B, M) ≥ 0
    (0 = missing point). ``initial`` parameters default to the mean face placed on the points' box.
    ``robust_scales`` (M,): each point's scale of the robust loss (default ``options.robust_scale`` for all).
    Shape: points (B, M, 2) pixels -> params (B, P)."""
    options = options or FitOptions()
    check_shape("points", points, (None, None, 2))
    batch, n_points, _ = points.shape
    dtype = options.dtype
    points = points.to(dtype)
    weights = torch.ones(batch, n_points, dtype=dtype) if weights is None else weights.to(dtype)
    check_shape("weights", weights, (batch, n_points))
    valid = weights > 0
    check_finite("points", torch.where(valid[..., None], points, 0.0))
    if bool((valid.sum(dim=1) < 3).any()):
        raise InvalidInputError("every face needs at least 3 target points with positive weight")
    points = torch.where(valid[..., None], points, 0.0)
    layout = ParamLayout.of(model)
    size = box_size(points, weights)
    if robust_scales is not None:
        check_shape("robust_scales", robust_scales, (n_points,))
    scales = options.robust_scale if robust_scales is None else torch.as_tensor(robust_scales, dtype=dtype)
    robust_pixels = size[:, None] * scales  # (B, 1 or M)
    if initial is None:
        initial = initial_params(model, points, weights)
    params = initial.to(dtype).clone()
    free = torch.zeros(layout.size, dtype=torch.bool)
    free[layout.pose] = True
    params = _levenberg_marquardt(model, params, points, weights, size, robust_pixels, vertex_for, free, options,
                                  options.pose_iterations)
    free[layout.identity] = options.fit_identity
    free[layout.expression] = options.fit_expression
    params = _levenberg_marquardt(model, params, points, weights, size, robust_pixels, vertex_for, free, options,
                                  options.iterations)
    return params.to(torch.float64)


def initial_params(model: FaceModel, points: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The mean face, frontal, filling the box of the target points. Shape: (B, M, 2), (B, M) -> (B, P)."""
    big = torch.finfo(points.dtype).max
    valid = (weights > 0)[..., None]
    box = torch.cat([torch.where(valid, points, big).amin(dim=1), torch.where(valid, points, -big).amax(dim=1)], 1)
    params = ParamLayout.of(model).initial(len(points), dtype=points.dtype)
    params[:, :N_POSE] = pose_from_box(model, box)
    return params


def projection_jacobian(model: FaceModel, params: torch.Tensor, vertex_ids: torch.Tensor):
    """Projected points and their derivatives with respect to every parameter.

    With x = mean + basis·α, u = s·(R x)_x + tx and v = −s·(R x)_y + ty, R = Rz Ry Rx:
    d/dα = s·[R_x; −R_y]·basis, d/ds = [(R x)_x, −(R x)_y], d/dt = identity, and d/dθ uses
    dR/dpitch = Rz Ry Rx K_x, dR/dyaw = Rz Ry K_y Rx, dR/droll = Rz K_z Ry Rx (K: cross-product matrices).
    Shape: params (B, P), vertex_ids (B, M) -> points (B, M, 2), jacobian (B, M, 2, P)."""
    return _Correspondence(model, params, vertex_ids).project(params, jacobian=True)


class _Correspondence:
    """The model's mean and basis gathered once at the chosen vertices, so that one LM iteration (a Jacobian
    and up to four trial steps) pays for the gather only once. With the shape held fixed, ``shape`` (B, N, 3)
    gives every vertex's position under the fixed α (computed once per fit: gathering the basis at every
    iteration costs a batch far more), and the chosen vertices' positions are all it keeps."""

    def __init__(self, model: FaceModel, params: torch.Tensor, vertex_ids: torch.Tensor,
                 shape: torch.Tensor | None = None):
        self.layout = ParamLayout.of(model)
        if shape is not None:
            self.shape = torch.gather(shape, 1, vertex_ids[..., None].expand(-1, -1, 3))  # (B, M, 3)
            return
        tensors = model.torch_tensors(params.device, params.dtype)
        self.shape = None
        flat = vertex_ids.reshape(-1)  # index_select: about twice as fast as indexing for these rows
        modes = tensors["basis"].shape[-1]
        self.mean = tensors["mean"].index_select(0, flat).view(*vertex_ids.shape, 3)  # (B, M, 3)
        self.basis = tensors["basis"].index_select(0, flat).view(*vertex_ids.shape, 3, modes)  # (B, M, 3, K)

    def project(self, params: torch.Tensor, jacobian: bool = False, shape_jacobian: bool = True):
        """Points (B, M, 2), and with ``jacobian`` their derivatives (B, M, 2, P), or only the pose's
        (B, M, 2, N_POSE) without ``shape_jacobian`` and always with a fixed shape."""
        layout = self.layout
        shape = self.shape
        if shape is None:
            batch, count = self.mean.shape[:2]  # one matrix product per face, not one per vertex
            offsets = self.basis.reshape(batch, 3 * count, self.basis.shape[-1]) @ params[:, layout.alpha, None]
            shape = self.mean + offsets.reshape(batch, count, 3)
        rx, ry, rz = elementary_rotations(params[:, :3])
        rotation = rz @ ry @ rx
        scale = params[:, 3, None, None]
        flip = torch.tensor([1.0, -1.0], dtype=params.dtype, device=params.device)  # v = −s·(R x)_y
        rotated = shape @ rotation.transpose(1, 2)  # (B, M, 3)
        points = scale * rotated[..., :2] * flip + params[:, None, 4:6]
        if not jacobian:
            return points
        skew = torch.tensor([[[0, 0, 0], [0, 0, -1], [0, 1, 0]], [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
                             [[0, -1, 0], [1, 0, 0], [0, 0, 0]]], dtype=params.dtype, device=params.device)
        d_rotation = torch.stack([rotation @ skew[0], rz @ ry @ skew[1] @ rx, rz @ skew[2] @ ry @ rx], dim=1)
        with_shape = shape_jacobian and self.shape is None
        derivatives = params.new_zeros(*shape.shape[:2], 2, layout.size if with_shape else N_POSE)
        d_angles = torch.einsum("bkij,bmj->bmik", d_rotation[:, :, :2], shape)  # (B, M, 2, 3)
        derivatives[..., :3] = scale[..., None] * d_angles * flip[:, None]
        derivatives[..., 3] = rotated[..., :2] * flip
        derivatives[..., 0, 4] = 1.0
        derivatives[..., 1, 5] = 1.0
        if with_shape:
            derivatives[..., layout.alpha] = scale[..., None] * flip[:, None] * (rotation[:, None, :2] @ self.basis)
        return points, derivatives


def _levenberg_marquardt(model, params, points, weights, size, robust_pixels, vertex_for, free, options,
                         iterations):
    """Minimize the data term plus the priors over the ``free`` parameters. The priors enter the normal
    equations directly (JᵀJ + diag(λ), Jᵀr + λ·x) rather than as extra residual rows."""
    layout = ParamLayout.of(model)
    blendshape = model.expression_prior == "blendshape"
    prior = torch.zeros(layout.size, dtype=params.dtype)
    prior[layout.identity] = options.identity_weight
    prior[layout.expression] = options.expression_weight
    free_ids = torch.nonzero(free).squeeze(1)
    shape_free = bool(free[layout.alpha].any())
    eye = torch.eye(len(free_ids), dtype=params.dtype)
    damping = torch.full((len(params),), options.damping, dtype=params.dtype)

    fixed_shape = None if shape_free or not iterations else model_shape(model, params)  # every vertex, once
    for _ in range(iterations):
        correspondence = _Correspondence(model, params, vertex_for(params), fixed_shape)
        projected, d_projected = correspondence.project(params, jacobian=True, shape_jacobian=shape_free)
        sqrt_w = _robust_sqrt_weights(projected, points, weights, robust_pixels, options)
        factor = (sqrt_w / size[:, None])[..., None]  # (B, M, 1)

        residual = ((projected - points) * factor).flatten(1)  # (B, 2M)
        j = (d_projected * factor[..., None]).flatten(1, 2)  # (B, 2M, N_POSE or P)
        if j.shape[-1] > len(free_ids):
            j = j[..., free_ids]  # (B, 2M, F)
        jtj = j.transpose(1, 2) @ j + torch.diag(prior[free_ids])
        jtr = j.transpose(1, 2) @ residual[..., None] + (prior * params)[:, free_ids, None]
        cost = _cost(params, projected, points, factor, prior)
        done = torch.zeros(len(params), dtype=torch.bool)
        for _attempt in range(4):  # raise the damping of faces whose step did not lower the cost
            diagonal = torch.diagonal(jtj, dim1=1, dim2=2)[..., None] * eye + 1e-9 * eye
            with _single_thread():
                cholesky, _ = torch.linalg.cholesky_ex(jtj + damping[:, None, None] * diagonal)
                step = torch.cholesky_solve(-jtr, cholesky)[..., 0]
            trial = params.clone()
            trial[:, free_ids] += step
            if blendshape:
                trial[:, layout.expression] = trial[:, layout.expression].clamp(0.0, 1.0)
            trial[:, 3] = trial[:, 3].clamp(min=1e-6)
            better = (_cost(trial, correspondence.project(trial), points, factor, prior) < cost) & ~done
            params = torch.where(better[:, None], trial, params)
            damping = torch.where(done, damping, torch.where(better, damping / 3, damping * 4)).clamp(1e-7, 1e7)
            done |= better  # a face takes one step per iteration, whatever the others in its batch do
            if bool(done.all()):
                break
    return params


@contextmanager
def _single_thread():
    """Run small batched LAPACK solves on one thread: for matrices of a few hundred rows threads gain nothing,
    and when other processes keep the cores busy oneMKL's threads wait on each other (measured 20× slower at
    2 threads than at 1 on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _cost(params, projected, points, factor, prior) -> torch.Tensor:
    """(B,) the weighted squared data residuals plus the prior terms."""
    return (((projected - points) * factor) ** 2).sum(dim=(1, 2)) + (prior * params ** 2).sum(dim=1)


def _robust_sqrt_weights(projected, points, weights, robust_pixels, options):
    """sqrt of the per-point weights: the given weights times the IRLS weights of the robust loss."""
    if options.robust == "none":
        return weights.sqrt()
    error = (projected.detach() - points).norm(dim=-1) / robust_pixels  # the robust loss's scale in pixels
    if options.robust == "huber":
        irls = torch.where(error <= 1, torch.ones_like(error), 1 / error.clamp(min=1e-12))
    else:  # Geman–McClure
        irls = 1 / (1 + error ** 2) ** 2
    return (weights * irls).sqrt()
