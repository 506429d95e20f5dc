import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from cprfa.data.augment import (
    FLIP_68,
    AugmentConfig,
    Sample,
    affine_matrix,
    augment,
    flip_landmarks,
    flip_sample,
    occlude,
    warp_sample,
)
from cprfa.errors import InvalidInputError
from cprfa.model.projection import ParamLayout, image_vertices, pose_from_box
from cprfa.model.render import render_pncc

S = 64


def rendered(model, yaw=0.0, roll=0.0, mirror=False) -> tuple[Sample, np.ndarray]:
    """The mean face rendered into an S × S crop, as a Sample (landmarks = the model's 68 points)."""
    params = ParamLayout.of(model).initial(1, dtype=torch.float64)
    angles = torch.tensor([[0.1, yaw, roll]], dtype=torch.float64)
    params[:, :6] = pose_from_box(model, torch.tensor([[17.0, 20.0, 45.0, 50.0]], dtype=torch.float64), angles)
    if mirror:  # the mirror pose: yaw -> -yaw, roll -> -roll, tx -> S - tx
        params[:, [1, 2]] *= -1
        params[:, 4] = S - params[:, 4]
    vertices = image_vertices(model, params)
    render = render_pncc(model, vertices.float(), S, S)
    mask = render.mask[0].numpy()
    pncc = render.pncc[0].numpy().astype(np.float32)
    rng = np.random.default_rng(0)
    image = np.where(mask[..., None], (pncc * 200 + 40).astype(np.uint8), rng.integers(0, 60, (S, S, 3), np.uint8))
    landmarks = vertices[0, model.landmarks68, :2].numpy()
    return Sample(image.astype(np.uint8), pncc, mask, landmarks), params


@pytest.fixture(scope="module")
def face(face_model):
    return rendered(face_model, yaw=0.3, roll=0.1)[0]


def test_warp_moves_image_content_with_landmarks_and_copies_pncc(face):
    image = np.zeros_like(face.image)
    points = np.array([[20.5, 30.5], [40.5, 22.5], [33.5, 45.5]], np.float32)
    for u, v in points:  # a bright 3 × 3 dot centred on each point's pixel
        image[int(v) - 1:int(v) + 2, int(u) - 1:int(u) + 2] = 255
    landmarks = face.landmarks.copy()
    landmarks[:3] = points
    sample = Sample(image, face.pncc, face.mask, landmarks)
    matrix = affine_matrix(S, 1.1, 17.0, (3.0, -4.0))
    moved = warp_sample(sample, matrix)
    for u, v in moved.landmarks[:3]:
        assert moved.image[int(v), int(u)].min() > 200
        window = moved.image[int(v) - 3:int(v) + 4, int(u) - 3:int(u) + 4, 0]
        row, col = np.unravel_index(np.argmax(window), window.shape)
        assert abs(row - 3) <= 1 and abs(col - 3) <= 1
    expected = np.c_[landmarks, np.ones(68)] @ matrix.T
    assert np.allclose(moved.landmarks, expected, atol=1e-4)
    # nearest: every warped code is one of the input's codes, never a blend; background stays 0
    warped = warp_sample(face, matrix)
    codes = {tuple(c) for c in face.pncc[face.mask]}
    assert warped.mask.sum() > 0.9 * face.mask.sum()
    assert all(tuple(c) in codes for c in warped.pncc[warped.mask])
    assert not warped.pncc[~warped.mask].any()


def test_model_pncc_is_mirror_symmetric(face_model):
    codes = face_model.pncc
    mirrored = codes.copy()
    mirrored[:, 0] = 1 - mirrored[:, 0]
    distance, _ = cKDTree(codes).query(mirrored)
    assert distance.max() < 1e-3


def test_flip_twice_is_identity_and_flip_matches_the_mirror_pose_render(face_model, face):
    twice = flip_sample(flip_sample(face))
    assert np.array_equal(twice.image, face.image) and np.array_equal(twice.mask, face.mask)
    # 1 - (1 - c) and S - (S - u) are exact up to float32 rounding
    assert np.allclose(twice.pncc, face.pncc, rtol=0, atol=1e-6)
    assert np.allclose(twice.landmarks, face.landmarks, rtol=0, atol=1e-5)
    flipped = flip_sample(face)
    mirror, _ = rendered(face_model, yaw=0.3, roll=0.1, mirror=True)
    disagree = (flipped.mask != mirror.mask).mean() / mirror.mask.mean()
    assert disagree < 0.03
    both = flipped.mask & mirror.mask
    error = np.abs(flipped.pncc[both] - mirror.pncc[both])
    assert np.median(error) < 0.01 and np.quantile(error, 0.95) < 0.05
    unflipped_x = np.abs(face.pncc[:, ::-1, 0][both] - mirror.pncc[..., 0][both])
    assert np.median(unflipped_x) > 0.1  # without c_x -> 1 - c_x the codes would not match
    # the re-indexed landmarks are the mirror pose's landmarks
    assert np.abs(flipped.landmarks - mirror.landmarks).max() < 0.05


def test_flip_68_is_an_involution_mapping_left_to_right_on_the_frontal_mean_face(face_model):
    assert np.array_equal(FLIP_68[FLIP_68], np.arange(68))
    assert sorted(FLIP_68) == list(range(68))
    assert FLIP_68[36] == 45 and FLIP_68[39] == 42 and FLIP_68[0] == 16 and FLIP_68[8] == 8
    params = ParamLayout.of(face_model).initial(1, dtype=torch.float64)
    params[:, :6] = pose_from_box(face_model, torch.tensor([[17.0, 20.0, 47.0, 50.0]], dtype=torch.float64))
    points = image_vertices(face_model, params, face_model.landmarks68)[0, :, :2].numpy()
    assert points[36, 0] < points[45, 0]  # landmark 36 (subject's right eye corner) is on the image's left
    assert np.abs(flip_landmarks(points, S) - points).max() < 1e-3  # x = 32 is the face's axis: mirror = self
    with pytest.raises(InvalidInputError):
        flip_landmarks(points[:10], S)


@pytest.mark.parametrize("fraction_range", [(0.1, 0.4), (0.2, 0.4), (0.3, 0.31)])
@pytest.mark.parametrize("with_source", [False, True])
def test_occlusion_coverage_is_in_range_and_removed_from_the_ground_truth(face, fraction_range, with_source):
    source = np.random.default_rng(5).integers(0, 256, (40, 90, 3), np.uint8) if with_source else None
    for seed in range(8):
        result = occlude(face.image, face.mask, np.random.default_rng(seed), fraction_range, source)
        image, occluded = result
        low, high = fraction_range
        face_pixels = face.mask.sum()
        assert low - 1 / face_pixels <= result.coverage <= high + 1 / face_pixels
        assert result.coverage == pytest.approx((occluded & face.mask).sum() / face_pixels)
        assert np.array_equal(image[~occluded], face.image[~occluded])
    config = AugmentConfig.off(p_occlude=1.0, occlusion_fraction=fraction_range)
    out = augment(face, np.random.default_rng(1), config, source)
    lost = face.mask & ~out.mask
    assert not (out.mask & ~face.mask).any()
    assert low - 0.01 <= lost.sum() / face.mask.sum() <= high + 0.01
    assert not out.pncc[lost].any() and np.array_equal(out.pncc[out.mask], face.pncc[out.mask])


def test_augment_is_deterministic_and_valid(face):
    source = np.random.default_rng(5).integers(0, 256, (80, 80, 3), np.uint8)
    config = AugmentConfig(p_occlude=1.0, p_blur=0.5, p_noise=0.5, p_jpeg=0.5, p_gray=0.3)
    changed = 0
    for seed in range(10):
        a = augment(face, np.random.default_rng(seed), config, source)
        b = augment(face, np.random.default_rng(seed), config, source)
        for key in ("image", "pncc", "mask", "landmarks"):
            assert np.array_equal(getattr(a, key), getattr(b, key)), key
        assert a.image.dtype == np.uint8 and a.pncc.dtype == np.float32 and a.mask.any()
        assert not a.pncc[~a.mask].any()
        changed += not np.array_equal(a.image, face.image)
    assert changed == 10
    identity = augment(face, np.random.default_rng(0), AugmentConfig.off())
    assert np.array_equal(identity.image, face.image) and np.array_equal(identity.pncc, face.pncc)


def test_bad_inputs_raise(face):
    with pytest.raises(InvalidInputError, match="pncc"):
        Sample(face.image, face.pncc.astype(np.float64), face.mask, face.landmarks)
    with pytest.raises(InvalidInputError, match="image"):
        Sample(face.image[:, :32], face.pncc, face.mask, face.landmarks)
    with pytest.raises(InvalidInputError, match="landmarks"):
        Sample(face.image, face.pncc, face.mask, face.landmarks[:5])
    with pytest.raises(InvalidInputError, match="mask"):
        Sample(face.image, face.pncc, face.mask.astype(np.uint8), face.landmarks)
    with pytest.raises(InvalidInputError, match="rng"):
        augment(face, 0, AugmentConfig())
    with pytest.raises(InvalidInputError, match="occluder_source"):
        augment(face, np.random.default_rng(0), AugmentConfig(), np.zeros((8, 8), np.uint8))
    with pytest.raises(InvalidInputError, match="probability"):
        AugmentConfig(p_flip=1.5)
    with pytest.raises(InvalidInputError, match="fraction_range"):
        occlude(face.image, face.mask, np.random.default_rng(0), (0.5, 0.2))
    with pytest.raises(InvalidInputError, match="no face pixels"):
        occlude(face.image, np.zeros_like(face.mask), np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="matrix"):
        warp_sample(face, np.eye(3))
