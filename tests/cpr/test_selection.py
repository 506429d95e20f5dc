import numpy as np
import pytest

from cprfa.cpr.selection import VertexSelection, select_vertices, vertex_statistics
from cprfa.errors import InvalidInputError, ModelFileError


def test_statistics_count_detections_and_accurate_ones():
    detected = np.array([[True, True, False], [True, False, False], [True, True, False], [False, True, False]])
    error = np.array([[1.0, 9.0, 0.0], [2.0, 0.0, 0.0], [5.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    p1, p2 = vertex_statistics(detected, error)
    assert np.allclose(p1, [0.75, 0.75, 0.0]) and np.allclose(p2, [2 / 3, 2 / 3, 0.0])


def test_selection_takes_the_best_of_each_side_in_three_shuffled_channels(face_model, tmp_path):
    rng = np.random.default_rng(1)
    p1, p2 = rng.uniform(size=(2, face_model.n_vertices)).astype(np.float32)
    selection = select_vertices(face_model, p1, p2, count=64, seed=3)
    assert selection.channels.shape == (3, 32) and selection.count == 64
    right = face_model.mean[:, 0] < 0
    assert right[selection.channels[0]].all() and not right[selection.channels[1]].any()
    score = p1 * p2
    for channel, side in ((0, right), (1, ~right)):
        # the channel holds exactly the 32 best-scored vertices of its side
        assert score[selection.channels[channel]].min() >= np.sort(score[side])[-32]
    assert set(selection.channels[2]) <= set(selection.vertex_ids) and right[selection.channels[2]].mean() == 0.5
    assert len(set(selection.vertex_ids)) == 64
    again = select_vertices(face_model, p1, p2, count=64, seed=3)
    assert np.array_equal(again.channels, selection.channels)  # reproducible from its seed
    other = select_vertices(face_model, p1, p2, count=64, seed=4)
    assert not np.array_equal(other.channels, selection.channels)
    assert set(other.channels[0]) == set(selection.channels[0])  # only the order changes
    selection.save(tmp_path / "s.npz")
    loaded = VertexSelection.load(tmp_path / "s.npz")
    assert np.array_equal(loaded.channels, selection.channels) and loaded.seed == 3
    with pytest.raises(InvalidInputError):
        select_vertices(face_model, p1, p2, count=30)
    np.savez(tmp_path / "other.npz", something=np.zeros(3))
    with pytest.raises(ModelFileError):
        VertexSelection.load(tmp_path / "other.npz")
