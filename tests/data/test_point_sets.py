import dataclasses

import torch

from cprfa.data.point_sets import OCCLUDED_TEST, PointSetSettings, synthetic_point_sets
from cprfa.model.projection import image_vertices, landmarks_3d

CLEAN = PointSetSettings(occlusion_probability=0.0, dropout=(0.0, 0.0), noise=(0.0, 0.0), outliers=(0.0, 0.0))


def test_clean_point_sets_are_the_visible_projected_vertices(face_model):
    sets = synthetic_point_sets(face_model, 6, seed=1, settings=CLEAN)
    assert sets.points.shape == (6, face_model.n_vertices, 2) and sets.detected.dtype == torch.bool
    assert torch.equal(sets.detected, sets.visible)
    projected = image_vertices(face_model, sets.params)[..., :2]
    assert torch.allclose(sets.points[sets.detected], projected[sets.detected])
    assert (sets.points[~sets.detected] == 0).all()
    # the renderer hides the far side of turned faces
    yaw = torch.rad2deg(sets.params[:, 1])
    left = face_model.mean[:, 0] > 1.0
    for face in range(6):
        if abs(yaw[face]) > 60:
            seen = sets.visible[face, torch.from_numpy(left)].float().mean()
            assert (seen < 0.3) if yaw[face] < 0 else (seen > 0.5)
    # faces are centred as the crop policy centres them, at a scale near 1
    assert ((sets.params[:, 3] > 0.8) & (sets.params[:, 3] < 1.4)).all()
    centre = landmarks_3d(face_model, sets.params)[..., :2].mean(dim=1)
    assert (centre.std(dim=0) < 2.0).all()


def test_failure_modes_and_determinism(face_model):
    sets = synthetic_point_sets(face_model, 8, seed=5, settings=OCCLUDED_TEST)
    again = synthetic_point_sets(face_model, 8, seed=5, settings=OCCLUDED_TEST)
    assert torch.equal(sets.points, again.points) and torch.equal(sets.detected, again.detected)
    assert not (sets.detected & ~sets.visible).any()
    kept = sets.detected.sum(dim=1).float() / sets.visible.sum(dim=1)
    assert ((kept > 0.2) & (kept < 0.7)).all()  # 30 % drop-out on top of a 30 % occluder
    # outliers and noise move detected points off their projections; most stay near
    projected = image_vertices(face_model, sets.params)[..., :2]
    error = (sets.points - projected).norm(dim=-1)[sets.detected]
    assert (error > 0).float().mean() > 0.99 and error.median() < 0.05 * sets.face_size.mean()
    other = synthetic_point_sets(face_model, 8, seed=6, settings=OCCLUDED_TEST)
    assert not torch.equal(other.params, sets.params)


def test_occluder_hides_a_block_of_the_face(face_model):
    block = dataclasses.replace(CLEAN, occlusion_probability=1.0, occlusion=(0.4, 0.4))
    clean = synthetic_point_sets(face_model, 4, seed=2, settings=CLEAN)
    occluded = synthetic_point_sets(face_model, 4, seed=2, settings=block)
    assert torch.equal(clean.params, occluded.params)
    lost = clean.detected & ~occluded.detected
    for face in range(4):
        hidden = clean.points[face, lost[face]]
        assert len(hidden) > 0.1 * clean.detected[face].sum()
        low, high = hidden.amin(dim=0), hidden.amax(dim=0)
        inside = ((clean.points[face] >= low) & (clean.points[face] <= high)).all(dim=-1) & clean.detected[face]
        assert not (inside & occluded.detected[face]).any()  # an axis-aligned block, nothing seen inside
