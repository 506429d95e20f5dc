import itertools

import numpy as np
import pytest
import torch

from cprfa.cpr.regressor import (
    DAFI_ONLY_WEIGHTS,
    DEFAULT_WEIGHTS,
    GROUPS,
    POSE_GROUPS,
    CPRAligner,
    CPRConfig,
    align_point_sets,
    aligner_input,
    average_pool,
    load_aligner,
    save_aligner,
)
from cprfa.cpr.selection import select_vertices
from cprfa.cpr.sparse import LandmarkSettings, synthetic_landmarks
from cprfa.data.point_sets import PointSetSettings, synthetic_point_sets
from cprfa.errors import InvalidInputError, ModelFileError
from cprfa.model.contour import landmarks_2d
from cprfa.model.projection import model_shape

SMALL = CPRConfig(widths=(4, 8, 8, 8, 8), hidden=16, stages=3)
FULL = CPRConfig(widths=(4, 8, 8, 8, 8), hidden=16, stages=2, rounds=2, fusion=True, sparse_widths=(4, 8))
OWN = {"alpha": slice(6, None), "rotation_xy": slice(0, 2), "rotation_z": slice(2, 3), "scale": slice(3, 4),
       "translation": slice(4, 6)}


@pytest.fixture(scope="module")
def channels(face_model):
    rng = np.random.default_rng(0)
    p1, p2 = rng.uniform(size=(2, face_model.n_vertices)).astype(np.float32)
    p1[np.setdiff1d(np.arange(face_model.n_vertices), face_model.face_area)] = 0
    return torch.from_numpy(select_vertices(face_model, p1, p2, count=64, seed=0).channels)


@pytest.fixture(scope="module")
def point_sets(face_model):
    return synthetic_point_sets(face_model, 3, seed=0)


@pytest.fixture(scope="module")
def landmarks(face_model, point_sets):
    truth = landmarks_2d(face_model, point_sets.params)[..., :2].float()
    return synthetic_landmarks(truth, point_sets.face_size, torch.Generator().manual_seed(0))


def _changed_groups_only(steps, size):
    for before, step in itertools.pairwise(steps):
        changed = (step.params != before.params).any(dim=0)
        changed[OWN[step.group]] = False
        assert not changed.any(), step.group
        assert step.params.shape[1] == size and torch.isfinite(step.params).all()


def test_round_one_runs_every_step_in_order_from_p0(face_model, channels, point_sets):
    torch.manual_seed(0)
    aligner = CPRAligner(face_model, channels, SMALL).eval()
    inputs = aligner_input(point_sets.points, point_sets.detected, channels)
    assert inputs.observed.shape == (3, 3, 32, 2) and inputs.detected.shape == (3, 3, 32)
    steps = aligner(inputs)
    assert [step.group for step in steps] == [*GROUPS, "translation"] * 3
    assert all(step.round == 1 for step in steps)
    _changed_groups_only(steps, aligner.layout.size)
    expression = steps[-1].params[:, aligner.layout.expression]
    assert (expression >= 0).all() and (expression <= 1).all()
    first_two = aligner(inputs, stages=2)  # what ``cprfa align --method cpr+refine`` runs
    assert all(torch.equal(a.params, b.params) for a, b in zip(steps, first_two, strict=False))
    assert len(first_two) == 10
    for stages in (0, 4):
        with pytest.raises(InvalidInputError):
            aligner(inputs, stages=stages)


def test_round_two_updates_pose_only_with_beta_in_range(face_model, channels, point_sets, landmarks):
    torch.manual_seed(3)
    aligner = CPRAligner(face_model, channels, FULL).eval()
    for layer in aligner.consistency.values():  # a β network that is not constant
        torch.nn.init.normal_(layer.layers[-1].weight, std=3.0)
    inputs = aligner_input(point_sets.points, point_sets.detected, channels, 0.1, *landmarks)
    steps = aligner(inputs)
    assert [(step.group, step.round) for step in steps] == (
        [(group, 1) for group in (*GROUPS, "translation")] * 2 + [(group, 2) for group in (*POSE_GROUPS, "translation")] * 2)
    _changed_groups_only(steps, aligner.layout.size)
    first = [step.beta for step in steps if step.round == 1 and step.beta is not None]
    second = torch.stack([step.beta for step in steps if step.round == 2 and step.beta is not None])
    assert all(torch.equal(beta, torch.ones(3, 2)) for beta in first)
    assert second.shape == (6, 3, 2) and (second >= 0).all() and (second <= 2).all()
    assert second[..., 0].std() > 0  # β follows the errors along the path
    assert len(aligner(inputs, rounds=1)) == 10
    with pytest.raises(InvalidInputError):
        aligner(inputs, rounds=3)
    jittered = aligner(inputs, step_jitter=0.5)  # training the β networks: round two's steps scaled at random
    assert all(torch.equal(a.params, b.params) for a, b in zip(steps, jittered, strict=True) if a.round == 1)
    assert not torch.equal(steps[-1].params, jittered[-1].params)


def test_fusion_runs_with_the_sparse_source_absent_partial_or_complete(face_model, channels, point_sets, landmarks):
    torch.manual_seed(4)
    aligner = CPRAligner(face_model, channels, FULL).eval()
    for regressor in aligner.sparse_regressors.values():  # a sparse branch with a say
        torch.nn.init.normal_(regressor.out.weight, std=0.1)
    points, given = landmarks
    partial = given.clone()
    partial[:, :30] = False
    results = {}
    for name, source in {"absent": (None, None), "partial": (points, partial),
                         "complete": (points, torch.ones_like(given))}.items():
        results[name] = align_point_sets(aligner, point_sets.points, point_sets.detected, *source)
        assert torch.isfinite(results[name]).all()
    assert not torch.allclose(results["partial"], results["complete"])
    assert not torch.allclose(results["absent"], results["complete"])
    # no source is the same as a source that gives no point, and as switching the branch off
    nothing = align_point_sets(aligner, point_sets.points, point_sets.detected, points, torch.zeros_like(given))
    assert torch.allclose(results["absent"], nothing)
    inputs = aligner_input(point_sets.points, point_sets.detected, channels, 0.1, points, given)
    with torch.no_grad():
        off = aligner(inputs, fuse=False)[-1].params
    assert torch.allclose(results["absent"], off, atol=1e-5)


def test_results_do_not_depend_on_the_batch_and_survive_missing_vertices(face_model, channels, point_sets, landmarks):
    torch.manual_seed(1)
    aligner = CPRAligner(face_model, channels, FULL).eval()
    detected = point_sets.detected.clone()
    detected[1] = False  # a face with nothing observed
    together = align_point_sets(aligner, point_sets.points, detected, *landmarks)
    alone = align_point_sets(aligner, point_sets.points[2:], detected[2:], landmarks[0][2:], landmarks[1][2:])
    assert torch.allclose(together[2:], alone, atol=1e-5)
    assert torch.isfinite(together).all()


def test_every_network_gets_gradients(face_model, channels, point_sets, landmarks):
    aligner = CPRAligner(face_model, channels, FULL)
    for name, parameter in aligner.named_parameters():  # the maps that start at zero, as after some training
        if not parameter.any() and name.endswith("weight"):
            torch.nn.init.normal_(parameter, std=0.1)
    points, given = landmarks
    inputs = aligner_input(point_sets.points, point_sets.detected, channels, 0.1, points, torch.ones_like(given))
    steps = aligner(inputs)
    sum(step.params[:, :6].sum() + step.params[:, 6:].square().sum() for step in steps).backward()
    for name, parameter in aligner.named_parameters():
        if ".norms." in name:
            continue  # batch norms of stages a group does not run (α in round two)
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_weights_round_trip_and_bad_files(face_model, channels, point_sets, tmp_path):
    torch.manual_seed(2)
    aligner = CPRAligner(face_model, channels, FULL).eval()
    save_aligner(aligner, tmp_path / "cpr.pt")
    loaded = load_aligner(tmp_path / "cpr.pt", face_model)
    assert torch.equal(loaded.channels, aligner.channels) and loaded.config == FULL
    expected = align_point_sets(aligner, point_sets.points, point_sets.detected)
    assert torch.allclose(align_point_sets(loaded, point_sets.points, point_sets.detected), expected, atol=1e-2)
    (tmp_path / "text.pt").write_text("not weights")
    for bad in (tmp_path / "text.pt", tmp_path / "missing.pt"):
        with pytest.raises(ModelFileError):
            load_aligner(bad, face_model)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not a cprfa CPR"):
        load_aligner(tmp_path / "other.pt", face_model)


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no shipped CPR weights")
def test_shipped_aligner_brings_the_model_onto_the_points(face_model):
    aligner = load_aligner(model=face_model)
    settings = PointSetSettings(yaw_max=60.0, occlusion_probability=0.0, dropout=(0.3, 0.3), noise=(0.01, 0.01),
                                outliers=(0.0, 0.0))
    sets = synthetic_point_sets(face_model, 16, seed=3, settings=settings)
    inputs = aligner_input(sets.points, sets.detected, aligner.channels)
    with torch.no_grad():
        steps = aligner(inputs)

    def reprojection_error(params):
        generated = aligner.generated(params)
        return ((generated - inputs.observed).norm(dim=-1) * inputs.detected).sum(dim=(1, 2)) / \
            inputs.detected.sum(dim=(1, 2))

    start = reprojection_error(aligner.layout.initial(16))
    stages = [reprojection_error(step.params) for step in steps if step.group == "translation"]
    assert (stages[-1] < 0.5 * start).float().mean() >= 0.9
    yaw_error = torch.rad2deg((steps[-1].params[:, 1] - sets.params[:, 1]).abs())
    assert yaw_error.median() < 10.0


def test_a_weights_file_that_differs_from_its_record_is_refused(face_model, channels, tmp_path):
    save_aligner(CPRAligner(face_model, channels, SMALL), tmp_path / "cpr.pt")
    (tmp_path / "cpr.record.json").write_text('{"sha256": "' + "0" * 64 + '"}')
    with pytest.raises(ModelFileError, match="sha256"):
        load_aligner(tmp_path / "cpr.pt", face_model)


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no shipped CPR weights")
@pytest.mark.parametrize("group", ["rotation_xy", "scale"])  # rz: README, "What this says"
def test_shipped_beta_moves_an_overshooting_or_undershooting_step_towards_the_minimum(face_model, group):
    aligner = load_aligner(model=face_model)
    if aligner.config.rounds < 2:
        pytest.skip("the shipped weights have no round two")
    settings = PointSetSettings(yaw_max=60.0, occlusion_probability=0.0, dropout=(0.3, 0.3), noise=(0.01, 0.01),
                                outliers=(0.0, 0.0))
    sets = synthetic_point_sets(face_model, 32, seed=11, settings=settings)
    inputs = aligner_input(sets.points, sets.detected, aligner.channels)
    correction = {"rotation_xy": torch.tensor([0.0, 0.2]), "scale": torch.tensor([0.15])}[group].expand(32, -1)
    start = aligner._updated(group, sets.params, -correction)  # the truth, moved away along the group
    pool_shape = model_shape(face_model, start, inputs.pool_ids)
    for factor in (0.5, 1.7):  # a step that undershoots the minimum, and one that overshoots it
        delta = factor * correction
        with torch.no_grad():
            beta = aligner.consistency[group](*aligner._path_errors(group, start, delta, pool_shape, inputs.pool_points,
                                                                            inputs.pool_weight))
        closer = ((beta * delta - correction).norm(dim=1) < (delta - correction).norm(dim=1)).float().mean()
        assert closer >= 0.8, (group, factor, beta.squeeze(1))



@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no shipped CPR weights")
def test_shipped_fusion_and_round_two_each_lower_the_error(face_model):
    aligner = load_aligner(model=face_model)
    if aligner.config.rounds < 2 or not aligner.config.fusion:
        pytest.skip("the shipped weights have no round two or no fusion")
    sets = synthetic_point_sets(face_model, 32, seed=21)
    truth = landmarks_2d(face_model, sets.params)[..., :2].float()
    landmarks, _ = synthetic_landmarks(truth, sets.face_size, torch.Generator().manual_seed(21),
                                       LandmarkSettings(absent=0.0, noise=(0.03, 0.03), missing=(0.0, 0.0)))

    def error(params):  # 68-point NME, 3D convention, %
        from cprfa.model.projection import landmarks_3d

        distance = (landmarks_3d(face_model, params) - landmarks_3d(face_model, sets.params))[..., :2].norm(dim=-1)
        return float((100 * distance.mean(dim=1) / sets.face_size).mean())

    alone = error(align_point_sets(aligner, sets.points, sets.detected, rounds=1))
    fused = error(align_point_sets(aligner, sets.points, sets.detected, landmarks, rounds=1))
    both = error(align_point_sets(aligner, sets.points, sets.detected, landmarks))
    assert both < fused < alone and both < 5.0, (alone, fused, both)


def test_weight_matrices_are_stored_as_int8_within_half_a_step(face_model, channels, tmp_path):
    torch.manual_seed(5)
    aligner = CPRAligner(face_model, channels, CPRConfig(widths=(4, 8, 8, 8, 8), hidden=64))
    save_aligner(aligner, tmp_path / "cpr.pt")
    stored = torch.load(tmp_path / "cpr.pt", weights_only=True)["state_dict"]
    assert isinstance(stored["regressors.alpha.cell.weight_ih"], dict)  # a large matrix
    loaded = load_aligner(tmp_path / "cpr.pt", face_model).state_dict()
    for key, value in aligner.state_dict().items():
        if isinstance(stored[key], dict):
            step = stored[key]["scale"].reshape(-1, *[1] * (value.dim() - 1))
            assert ((loaded[key] - value).abs() <= step / 2 + 1e-6).all(), key


@pytest.mark.parametrize("size", [4, 5, 9, 17, 64])
def testaverage_pool_matches_adaptive_pooling(size):
    features = torch.randn(2, 3, size, size + 3)
    assert torch.allclose(average_pool(features, 4), torch.nn.functional.adaptive_avg_pool2d(features, 4),
                          atol=1e-6)


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no shipped CPR weights")
def test_the_fused_aligner_computes_what_the_aligner_computes(face_model):
    aligner = load_aligner(model=face_model)
    fused = aligner.fused()
    sets = synthetic_point_sets(face_model, 4, seed=5)
    landmarks = landmarks_2d(face_model, sets.params)[..., :2].float()
    expected = align_point_sets(aligner, sets.points, sets.detected, landmarks)
    assert torch.allclose(align_point_sets(fused, sets.points, sets.detected, landmarks), expected, atol=1e-4)
    assert all(regressor.folded is not None for regressor in fused.regressors.values())
    assert all(regressor.folded is None for regressor in fused.train().regressors.values())  # training: the norms
    assert aligner.regressors["scale"].folded is None  # the original is untouched


def test_weights_from_before_the_leaky_sixth_layer_and_the_scale_cap_run_as_they_were_trained(face_model, channels):
    old = {key: value for key, value in SMALL.to_dict().items() if key not in ("sixth_slope", "scale_ratio_max")}
    config = CPRConfig.from_dict(old)
    assert config.sixth_slope == 0.0 and config.scale_ratio_max == float("inf")
    assert isinstance(CPRAligner(face_model, channels, config).regressors["scale"].sixth[1], torch.nn.ReLU)
    assert CPRConfig.from_dict(SMALL.to_dict()) == SMALL and SMALL.sixth_slope > 0
    assert isinstance(CPRAligner(face_model, channels, SMALL).regressors["scale"].sixth[1], torch.nn.LeakyReLU)


@pytest.mark.skipif(not DAFI_ONLY_WEIGHTS.is_file(), reason="no shipped CPR(512) weights")
def test_shipped_dafi_only_aligner_follows_the_size_and_turn_of_the_points(face_model):
    aligner = load_aligner(DAFI_ONLY_WEIGHTS, face_model)
    assert not aligner.config.fusion
    settings = PointSetSettings(yaw_max=45.0, occlusion_probability=0.0, dropout=(0.3, 0.3), noise=(0.01, 0.01),
                                outliers=(0.0, 0.0))
    sets = synthetic_point_sets(face_model, 16, seed=5, settings=settings)
    weight = sets.detected[..., None].float()
    centre = (sets.points * weight).sum(dim=1, keepdim=True) / weight.sum(dim=1, keepdim=True)
    smaller, larger = (align_point_sets(aligner, (sets.points - centre) * factor + centre, sets.detected)[:, 3]
                       for factor in (0.9, 1.15))  # the same faces, smaller and larger
    found = larger / smaller  # 1.15 / 0.9 = 1.28 if it followed them exactly; a dead scale regressor: 1
    assert found.median() > 1.15 and ((found > 1.04) & (found < 1.4)).all(), found
    yaw_error = torch.rad2deg((align_point_sets(aligner, sets.points, sets.detected)[:, 1] - sets.params[:, 1]).abs())
    assert yaw_error.median() < 8.0
