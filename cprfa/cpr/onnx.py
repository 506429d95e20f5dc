"""The CPR aligner through ONNX: export it (``cprfa export-onnx``) and run it with onnxruntime (``--runtime auto``,
the default, and ``--runtime onnx``).

The whole alignment becomes one graph: from the aligner's input (``AlignerInput``: the selected vertices, the
error pool, the sparse landmarks) to the final parameters, with everything between the networks (the CPRs,
Y^G, consistency-aware updating, the translation steps) and the networks of every stage, each stage's
batch norms folded into its convolutions. One graph per schedule (rounds, and stages per round) that is
asked for, of one face (the error pool's size is dynamic); ``OnnxAligner`` runs up to ONNX_FACES faces
through it one at a time and stands in for the torch forward through ``CPRAligner.runtime``
(``align_point_sets`` hands it the input). Why one graph: an alignment is about 1,700 small torch operations,
most of the time their overhead; onnxruntime runs the same work with less of it, and on both threads (one face:
both rounds 32 against 63 ms, cpr+refine's two stages of round one 14 against 24 ms; README, "ONNX"). Why one face:
with the batch size fixed, the export computes the graph's shapes once instead of in a few thousand small
operations at every run, and onnxruntime's memory arena can keep its buffers: both rounds about a tenth
faster, and two faces one after the other take less time than both in one batch of the dynamic graph (README,
"ONNX"). ``cprfa export-onnx`` writes graphs of a dynamic batch size. A graph traced with a sparse source runs
faces without one too: their landmark branch adds nothing, as in torch.

Exporting a graph takes 4–8 s, more than a command on a few photos gains from it, so ``OnnxAligner`` keeps
the graphs in a cache folder (``cache_folder``) under a key of the weights, the face model, torch's version,
the opset and the graph format (``graph_key``), one file per schedule, and checks a cached graph against
torch on a fixed input before it trusts it: a graph written by other code, or a damaged file, is exported
again. Writing a graph removes those of all but the CACHED_KEYS most recently used keys (45–75 MB a
schedule: new weights or a new torch would otherwise leave the old ones for good).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cprfa.cpr.regressor import GROUPS, AlignerInput, CPRAligner, aligner_input
from cprfa.dafi.onnx import OPSET, cpu_session
from cprfa.model.contour import landmarks_2d
from cprfa.model.projection import model_shape, weak_perspective

INPUT_NAMES = tuple(field.name for field in dataclasses.fields(AlignerInput))
POOLED = ("pool_ids", "pool_points", "pool_weight")  # their second axis, the pool's size, is dynamic too
CACHE_VARIABLE = "CPRFA_CACHE_DIR"
GRAPH_FORMAT = 3  # in the cache key: 1 was one graph per parameter group's networks, 2 of a dynamic batch size
AGREEMENT = 1e-3  # largest difference from torch that a cached graph's parameters may show
# Up to ONNX_FACES faces run in onnxruntime, one at a time, on torch's threads (spinning only while a run lasts:
# onnxruntime's session.force_spinning_stop); more run in torch, in one batch, which is as fast from four faces on
# (README, "ONNX").
ONNX_FACES = 4
CACHED_KEYS = 2  # writing a graph keeps the graphs of this many keys: its own and the most recently used
# a cached graph's name: its key, and its schedule (r<rounds>s<stages>[-dense], or a group of GRAPH_FORMAT 1)
CACHED_NAME = re.compile(rf"cpr-([0-9a-f]{{16}})-(r\d+s\d+(?:-dense)?|{'|'.join(GROUPS)})\.onnx")


class _AlignmentGraph(nn.Module):
    def __init__(self, aligner: CPRAligner, rounds: int, stages: int):
        super().__init__()
        self.aligner, self.rounds, self.stages = aligner, rounds, stages

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.aligner(AlignerInput(*tensors), rounds=self.rounds, stages=self.stages)[-1].params


def export_aligner(aligner: CPRAligner, target: str | Path | io.BytesIO, rounds: int | None = None,
                   stages: int | None = None, sparse: bool = True, one_face: bool = False) -> None:
    """Write the alignment of ``rounds`` rounds of ``stages`` stages (default: all the weights have), with the
    ``sparse`` source (it then also runs faces without one) or without, as an ONNX graph to a file or a buffer,
    of any batch size or, with ``one_face``, of one face (module docstring). Inputs: the fields of
    ``AlignerInput`` that it reads (those of the error pool only with round two, of the sparse source only with
    it); output: the parameters (B, P), normalized frame."""
    rounds, stages = aligner.schedule(rounds, stages)
    batch = {} if one_face else {0: "batch"}
    axes = {name: {**batch, 1: "pool"} if name in POOLED else batch for name in INPUT_NAMES}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer notes
        torch.onnx.export(_AlignmentGraph(aligner, rounds, stages).eval(),
                          tuple(vars(example_input(aligner, sparse, 1 if one_face else 2)).values()),
                          target, input_names=list(INPUT_NAMES), output_names=["params"], opset_version=OPSET,
                          dynamo=False, dynamic_axes=axes | {"params": batch})


def example_input(aligner: CPRAligner, sparse: bool = True, faces: int = 2) -> AlignerInput:
    """A fixed input of the first ``faces`` of two (the mean face turned by 17° and −29° of yaw, the first third
    and the first fifth of the vertices unseen, so that their error pools differ in size), with ``sparse`` the
    first with the 68 landmarks as its sparse source, the second without: what a graph is traced on (two faces)
    and checked with."""
    params = aligner.layout.initial(2)
    params[:, :3] = torch.tensor([[0.1, 0.3, -0.05], [-0.15, -0.5, 0.1]])
    params[:, 3] = torch.tensor([0.95, 1.05])
    points = weak_perspective(model_shape(aligner.model, params), params[:, :6])[..., :2]
    detected = torch.ones(points.shape[:2], dtype=torch.bool)
    detected[0, : aligner.n_vertices // 3] = False
    detected[1, : aligner.n_vertices // 5] = False
    landmarks = landmarks_2d(aligner.model, params)[..., :2]
    given = torch.tensor([sparse, False])[:, None].expand(-1, landmarks.shape[1])
    return aligner_input(points[:faces], detected[:faces], aligner.channels, aligner.config.kappa,
                         landmarks[:faces], given[:faces])


class OnnxAligner:
    """Aligns like the aligner's torch forward, a batch of one to ONNX_FACES faces in onnxruntime, a face at a
    time, any other in torch; set it as the aligner's ``runtime``. ``cache``: keep the exported graphs in
    ``cache_folder()`` (module docstring). A schedule's graph is loaded or exported when first asked for: one
    traced with a sparse source, and one without for a batch where no face has one (``AlignerInput.present``)."""

    def __init__(self, aligner: CPRAligner, cache: bool = True):
        self.aligner = aligner
        self.key = graph_key(aligner) if cache else None
        self._sessions: dict[tuple[int, int, bool], object] = {}

    def session(self, rounds: int | None = None, stages: int | None = None, sparse: bool = True):
        """The session of ``rounds`` rounds of ``stages`` stages, with or without the ``sparse`` source."""
        setting = (*self.aligner.schedule(rounds, stages), sparse and self.aligner.config.fusion)
        if setting not in self._sessions:
            self._sessions[setting] = _session(self.aligner, *setting, self.key)
        return self._sessions[setting]

    def __call__(self, inputs: AlignerInput, rounds: int | None = None, stages: int | None = None) -> torch.Tensor:
        """The final parameters. Shape: an input of B faces -> (B, P)."""
        if not 1 <= len(inputs) <= ONNX_FACES:
            with torch.inference_mode():
                return self.aligner(inputs, rounds=rounds, stages=stages)[-1].params
        session = self.session(rounds, stages, bool(inputs.present.any()))
        params = np.concatenate([_run(session, inputs[face:face + 1]) for face in range(len(inputs))])
        return torch.from_numpy(params).to(inputs.observed.device)


def _run(session, inputs: AlignerInput) -> np.ndarray:
    wanted = {node.name for node in session.get_inputs()}
    feed = {name: value.detach().cpu().numpy() for name, value in vars(inputs).items() if name in wanted}
    return session.run(None, feed)[0]


def cache_folder() -> Path:
    """Where exported graphs are kept between runs: $CPRFA_CACHE_DIR, else $XDG_CACHE_HOME/cprfa, else
    ~/.cache/cprfa (the system's temporary folder when there is no home folder)."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "cprfa"
    try:
        return Path.home() / ".cache" / "cprfa"
    except RuntimeError:  # no home folder to be found
        return Path(tempfile.gettempdir()) / "cprfa-cache"


def graph_key(aligner: CPRAligner) -> str:
    """What an aligner's graphs depend on, hashed: its weights (not the folded copies of ``fused``), config,
    channels and face model (whose tensors a graph holds), torch's version, the opset and the graphs' format."""
    digest = hashlib.sha256(f"{aligner.config.to_dict()} {aligner.channels.tolist()} {torch.__version__} "
                            f"{OPSET} {GRAPH_FORMAT}".encode())
    tensors = aligner.model.torch_tensors()
    values = {**aligner.state_dict(), "model mean": tensors["mean"], "model basis": tensors["basis"]}
    for name, value in values.items():
        if ".folded." in name:
            continue
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _session(aligner: CPRAligner, rounds: int, stages: int, sparse: bool, key: str | None):
    """A session for a schedule's graph of one face: the cached one when it is there and agrees with
    torch, else a fresh export (written to the cache when ``key`` is given and the folder is writable)."""
    name = f"cpr-{key}-r{rounds}s{stages}{'' if sparse else '-dense'}.onnx"
    path = cache_folder() / name if key is not None else None
    session = _cached_session(path, aligner, rounds, stages, sparse) if path is not None else None
    if session is not None:
        return session
    buffer = io.BytesIO()
    export_aligner(aligner, buffer, rounds, stages, sparse, one_face=True)
    if path is not None:
        _write_atomically(path, buffer.getvalue())
        _prune(path.parent, key)
    return cpu_session(buffer.getvalue(), arena=True)


def _prune(folder: Path, key: str) -> None:
    """Delete the cached graphs that GRAPH_FORMAT 1 wrote (one per parameter group: no code reads them) and those
    of keys other than ``key`` but for the CACHED_KEYS − 1 whose graphs were used last (a file's modification
    time: written, or read by ``_cached_session``)."""
    last_use: dict[str, float] = {}
    graphs: dict[str, list[Path]] = {}
    for path in folder.glob("cpr-*.onnx"):
        name = CACHED_NAME.fullmatch(path.name)
        if name is None:  # not a graph this module wrote
            continue
        owner, schedule = name.groups()
        if schedule in GROUPS:
            _remove(path)
            continue
        try:
            used = path.stat().st_mtime
        except OSError:  # removed meanwhile
            continue
        last_use[owner] = max(last_use.get(owner, used), used)
        graphs.setdefault(owner, []).append(path)
    others = sorted((owner for owner in last_use if owner != key), key=last_use.get, reverse=True)
    for owner in others[CACHED_KEYS - 1:]:
        for path in graphs[owner]:
            _remove(path)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a folder this user may not change: it stays
        pass


def _cached_session(path: Path, aligner: CPRAligner, rounds: int, stages: int, sparse: bool):
    """The session of a cached graph, or None when there is none, or it cannot be read, is damaged or disagrees
    with torch."""
    try:
        graph = path.read_bytes()
    except OSError:  # absent, or a folder this user may not enter
        return None
    try:
        session = cpu_session(graph, arena=True)
        if not _agrees(session, aligner, rounds, stages, sparse):
            return None
    except Exception:  # noqa: BLE001 - onnxruntime's errors for a damaged or foreign graph share no class below it
        return None
    try:
        os.utime(path)  # its last use, which _prune goes by
    except OSError:
        pass
    return session


def _write_atomically(path: Path, content: bytes) -> None:
    """Write a file whole or not at all (a temporary file in its folder, then renamed); an unwritable cache
    only costs the next run the export."""
    partial = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.replace(partial, path)
        partial = None
    except OSError:
        pass
    finally:
        if partial is not None:
            Path(partial).unlink(missing_ok=True)


def _agrees(session, aligner: CPRAligner, rounds: int, stages: int, sparse: bool) -> bool:
    """Whether a one-face session gives the torch forward's parameters, within AGREEMENT, on each of
    ``example_input``'s two faces (the second: another error-pool size than the graph was traced with)."""
    both = example_input(aligner, sparse)
    for face in range(len(both)):
        inputs = both[face:face + 1]
        with torch.inference_mode():
            expected = aligner(inputs, rounds=rounds, stages=stages)[-1].params.numpy()
        actual = _run(session, inputs)
        if actual.shape != expected.shape or np.abs(actual - expected).max() > AGREEMENT:
            return False
    return True
