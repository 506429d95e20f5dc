import os
import re
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cprfa.align import FaceAligner
from cprfa.cli.main import main
from cprfa.cpr import onnx as cpr_onnx
from cprfa.cpr.onnx import OnnxAligner, cache_folder, example_input
from cprfa.cpr.regressor import align_point_sets, aligner_input, load_aligner
from cprfa.dafi.onnx import OnnxNetwork
from cprfa.dafi.predict import DafiEstimator
from cprfa.dafi.refine import load_refiner
from cprfa.data.images import load_image
from cprfa.data.point_sets import synthetic_point_sets
from cprfa.errors import InvalidInputError
from cprfa.model.contour import landmarks_2d
from cprfa.model.projection import landmarks_3d

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "astronaut.jpg"
EXAMPLE_BOX = (178.0, 80.0, 262.0, 180.0)


def test_onnx_and_torch_agree_on_the_bundled_example():
    image = load_image(EXAMPLE)
    torch_estimator, onnx_estimator = DafiEstimator.from_file(), DafiEstimator.from_file(runtime="onnx")
    crop, box = torch_estimator.crop(image, EXAMPLE_BOX)
    crops = np.stack([crop, crop[:, ::-1]])  # a batch of two
    detail = torch_estimator.detail_crop(image, box)
    details = np.stack([detail, detail[:, ::-1]])  # the landmark refiner runs by torch in both
    expected, actual = torch_estimator.predict(crops, detail=details), onnx_estimator.predict(crops, detail=details)
    assert np.abs(actual.dafi - expected.dafi).max() < 1e-3
    assert np.abs(actual.foreground - expected.foreground).max() < 1e-3
    assert np.abs(actual.landmarks - expected.landmarks).max() < 0.05  # crop pixels
    assert (actual.mask != expected.mask).mean() < 1e-3
    face = FaceAligner(runtime="onnx").align(image, [EXAMPLE_BOX])[0]
    reference = FaceAligner().align(image, [EXAMPLE_BOX])[0]
    assert np.linalg.norm(face.landmarks_2d - reference.landmarks_2d, axis=1).max() < 0.5  # pixels
    with pytest.raises(InvalidInputError):
        DafiEstimator.from_file(runtime="tensorrt")


def test_export_onnx_writes_graphs_onnxruntime_runs(tmp_path, capsys):
    assert main(["export-onnx", "--out", str(tmp_path)]) == 0
    session = ort.InferenceSession(str(tmp_path / "hsunet.onnx"), providers=["CPUExecutionProvider"])
    size = DafiEstimator.from_file().input_size
    full, heatmaps = session.run(None, {"image": np.zeros((3, 3, size, size), np.float32)})
    assert full.shape == (3, 4, size, size) and heatmaps.shape[:2] == (3, 68)
    session = ort.InferenceSession(str(tmp_path / "refiner.onnx"), providers=["CPUExecutionProvider"])
    points = np.full((2, 68, 2), size, np.float32)
    (refined,) = session.run(None, {"image": np.zeros((2, 3, 2 * size, 2 * size), np.float32), "points": points})
    expected = load_refiner()(torch.zeros(2, 3, 2 * size, 2 * size), torch.from_numpy(points)).detach().numpy()
    assert refined.shape == (2, 68, 2) and np.abs(refined - expected).max() < 1e-3
    aligner = load_aligner().fused()
    graphs = sorted(path.name for path in (tmp_path / "cpr").glob("*.onnx"))
    assert graphs == ["rounds1_stages2.onnx", "rounds2_stages3.onnx"]  # cpr+refine's; cpr's and cpr+pose's
    inputs = example_input(aligner)
    for name in graphs:
        session = ort.InferenceSession(str(tmp_path / "cpr" / name), providers=["CPUExecutionProvider"])
        wanted = {node.name for node in session.get_inputs()}
        (params,) = session.run(None, {key: value.numpy() for key, value in vars(inputs).items() if key in wanted})
        rounds, stages = map(int, re.fullmatch(r"rounds(\d)_stages(\d)\.onnx", name).groups())
        with torch.inference_mode():
            expected = aligner(inputs, rounds=rounds, stages=stages)[-1].params
        assert np.abs(params - expected.numpy()).max() < 1e-4


def test_onnx_and_torch_aligners_agree_on_synthetic_faces(face_model):
    aligner = load_aligner(model=face_model).fused()
    sets = synthetic_point_sets(face_model, 4, 123)
    landmarks = landmarks_2d(face_model, sets.params)[..., :2].float()
    schedules = ((None, None), (1, 2))  # both rounds; cpr+refine's two stages of round one
    runtime = OnnxAligner(aligner)

    def aligned(runtime):  # a face at a time and two together, all in onnxruntime
        aligner.runtime = runtime
        return [torch.cat([align_point_sets(aligner, sets.points[part], sets.detected[part],
                                            None if source is None else source[part], rounds=rounds, stages=stages)
                           for part in (slice(0, 1), slice(1, 2), slice(2, 4))])
                for rounds, stages in schedules for source in (landmarks, None)]  # None: the sparse branch off

    expected, actual = aligned(None), aligned(runtime)
    assert sorted(runtime._sessions) == [(1, 2, False), (1, 2, True), (2, 3, False), (2, 3, True)]
    for got, wanted in zip(actual, expected, strict=True):
        assert _close_fits(face_model, got, wanted)


def _close_fits(face_model, got: torch.Tensor, wanted: torch.Tensor) -> bool:
    """Whether every face's mean 68-landmark difference is under 0.5 % of its width (about 15 model units):
    a face near a tie of the silhouette's choice can move that much from a difference in the last bit."""
    truth = landmarks_3d(face_model, wanted)[..., :2]
    difference = torch.linalg.vector_norm(landmarks_3d(face_model, got)[..., :2] - truth, dim=-1).mean(dim=1)
    return bool((difference < 0.005 * wanted[:, 3] * 15).all())


def test_a_few_faces_run_in_onnxruntime_one_at_a_time_and_more_in_torch(face_model):
    aligner = load_aligner(model=face_model).fused()
    runtime = OnnxAligner(aligner)
    sets = synthetic_point_sets(face_model, cpr_onnx.ONNX_FACES + 1, 7)
    with torch.inference_mode():
        expected = aligner(aligner_input(sets.points, sets.detected, aligner.channels), rounds=1, stages=1)[-1].params
    aligner.runtime = runtime
    assert torch.equal(align_point_sets(aligner, sets.points, sets.detected, rounds=1, stages=1), expected)  # torch
    assert not runtime._sessions
    few = align_point_sets(aligner, sets.points[:2], sets.detected[:2], rounds=1, stages=1)
    assert _close_fits(face_model, few, expected[:2])
    assert list(runtime._sessions) == [(1, 1, False)]  # the graph without a sparse source: these faces have none
    session = runtime.session(1, 1, False)
    options = session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()  # torch's threads, which spin only in a run
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert all(node.shape[0] == 1 for node in session.get_inputs())  # a graph of one face, run once per face
    empty = align_point_sets(aligner, sets.points[:0], sets.detected[:0], rounds=1, stages=1)
    assert empty.shape == (0, expected.shape[1])


def test_the_aligner_graphs_are_cached_checked_and_exported_again_when_bad(tmp_path, monkeypatch):
    monkeypatch.setenv(cpr_onnx.CACHE_VARIABLE, str(tmp_path))
    assert cache_folder() == tmp_path
    aligner = load_aligner().fused()
    inputs = example_input(aligner)
    with torch.inference_mode():
        expected = aligner(inputs, rounds=1, stages=1)[-1].params
    old_format = [tmp_path / f"cpr-0123456789abcdef-{group}.onnx" for group in ("alpha", "rotation_xy")]
    for path in old_format:
        path.write_bytes(b"a graph of one group's networks, as before")
    other_keys = [tmp_path / f"cpr-{key}-r1s2{dense}.onnx" for key in ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb")
                  for dense in ("", "-dense")]
    not_graphs = [tmp_path / "cpr-mine-r1s2.onnx", tmp_path / "cpr-bbbbbbbbbbbbbbbb-r1s2.onnx.x1.tmp"]
    for age, path in enumerate(other_keys + not_graphs):  # the first key's graphs used last
        path.write_bytes(b"a graph of other weights")
        os.utime(path, (time.time() - 3600 * (age + 1),) * 2)
    OnnxAligner(aligner).session(1, 1)
    OnnxAligner(aligner).session(1, 2)
    assert not any(path.exists() for path in old_format)  # removed when a graph is written
    assert [path.exists() for path in other_keys + not_graphs] == [True, True, False, False, True, True]
    for path in other_keys[:2] + not_graphs:
        path.unlink()
    graphs = {path.name.rsplit("-", 1)[1]: path for path in tmp_path.glob("cpr-*.onnx")}
    assert sorted(graphs) == ["r1s1.onnx", "r1s2.onnx"]
    os.utime(graphs["r1s1.onnx"], (0, 0))

    def no_export(*_args):
        raise AssertionError("exported although cached")

    with monkeypatch.context() as patch:  # a second aligner reads the cache
        patch.setattr(cpr_onnx, "export_aligner", no_export)
        assert (OnnxAligner(aligner)(inputs, 1, 1) - expected).abs().max() < 1e-4
    assert graphs["r1s1.onnx"].stat().st_mtime > time.time() - 600  # its use, which the pruning goes by
    exported, export = [], cpr_onnx.export_aligner

    def counted_export(aligner, target, rounds, stages, sparse, **options):
        exported.append((rounds, stages))
        export(aligner, target, rounds, stages, sparse, **options)

    monkeypatch.setattr(cpr_onnx, "export_aligner", counted_export)
    graphs["r1s1.onnx"].write_bytes(b"not a graph")  # damaged
    OnnxAligner(aligner).session(1, 1)
    graphs["r1s1.onnx"].write_bytes(graphs["r1s2.onnx"].read_bytes())  # another schedule's, the same inputs
    OnnxAligner(aligner).session(1, 1)
    assert exported == [(1, 1), (1, 1)]
    assert graphs["r1s1.onnx"].stat().st_size > 10**6


def test_a_cache_folder_that_cannot_be_used_costs_only_the_export(tmp_path, monkeypatch):
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    monkeypatch.setenv(cpr_onnx.CACHE_VARIABLE, str(blocked / "cache"))
    aligner = load_aligner().fused()
    inputs = example_input(aligner)
    with torch.inference_mode():
        expected = aligner(inputs, rounds=1, stages=1)[-1].params
    assert (OnnxAligner(aligner)(inputs, 1, 1) - expected).abs().max() < 1e-4
    assert blocked.read_text() == "not a folder" and list(tmp_path.iterdir()) == [blocked]


def test_the_default_runtime_runs_the_aligner_networks_with_onnxruntime():
    assert isinstance(FaceAligner().cpr.runtime, OnnxAligner)
    assert FaceAligner(runtime="torch").cpr.runtime is None
    assert isinstance(FaceAligner(runtime="onnx").estimator.network, OnnxNetwork)
    with pytest.raises(InvalidInputError, match="runtime"):
        FaceAligner(runtime="tensorrt")
