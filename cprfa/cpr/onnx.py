"""The CPR aligner's networks through ONNX: export them (``cprfa export-onnx``) and run them with onnxruntime
(``--runtime auto``, the default, and ``--runtime onnx``).

The networks of a step (``CPRAligner.step_networks``: the DAFI branch's CNN and GRU and, with fusion, the
sparse branch's and their crossing) become one graph per group. Its first input is the stage (an int64
scalar), which picks that stage's batch-norm statistics: the stages share every other weight, so one graph
per stage would repeat them. The batch size is dynamic. Everything between the networks (the CPRs, Y^G,
consistency-aware updating, the translation step) stays in torch, so ``OnnxStepNetworks`` stands in for
``step_networks`` through ``CPRAligner.runtime``. With fusion, a batch without any sparse source runs the
fused graphs with the sparse branch switched off (zero input, ``present`` 0), which gives what the DAFI
branch alone gives.

Exporting the four graphs takes about 3 s, more than a command on a few photos gains from them, so
``OnnxStepNetworks`` keeps them in a cache folder (``cache_folder``) under a key of the weights, torch's
version and the opset, and checks a cached graph against torch on a fixed input before it trusts it: a graph
written by other code, or a damaged file, is exported again.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cprfa.cpr.regressor import GROUPS, CPRAligner
from cprfa.cpr.sparse import N_LANDMARKS
from cprfa.dafi.onnx import OPSET, cpu_session

DENSE_NAMES = ("cpr", "state")
FUSED_NAMES = ("cpr", "state", "sparse_cpr", "sparse_state", "present")
CACHE_VARIABLE = "CPRFA_CACHE_DIR"
AGREEMENT = 1e-3  # largest difference from torch that a cached graph's outputs may show


class _GroupGraph(nn.Module):
    def __init__(self, aligner: CPRAligner, group: str):
        super().__init__()
        self.aligner, self.group = aligner, group

    def forward(self, stage: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.aligner.step_networks(self.group, stage, *tensors)


def export_group(aligner: CPRAligner, group: str, target: str | Path | io.BytesIO) -> None:
    """Write the networks of one group's steps (every stage) as an ONNX graph to a file or a buffer."""
    channels, count = aligner.channels.shape
    example = [torch.zeros(2, channels, count, count), torch.zeros(2, aligner.config.hidden)]
    names, outputs = DENSE_NAMES, ["delta", "next_state"]
    if aligner.config.fusion:
        example += [torch.zeros(2, 3, N_LANDMARKS, N_LANDMARKS), torch.zeros(2, aligner.config.hidden),
                    torch.ones(2)]
        names, outputs = FUSED_NAMES, outputs + ["sparse_delta", "next_sparse_state"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer notes
        torch.onnx.export(_GroupGraph(aligner, group).eval(), (torch.tensor(0), *example), target,
                          input_names=["stage", *names], output_names=outputs, opset_version=OPSET, dynamo=False,
                          dynamic_axes={name: {0: "batch"} for name in (*names, *outputs)})


class OnnxStepNetworks:
    """onnxruntime sessions answering like ``CPRAligner.step_networks``; set it as the aligner's ``runtime``.
    ``cache``: keep the exported graphs in ``cache_folder()`` (module docstring)."""

    def __init__(self, aligner: CPRAligner, threads: int | None = None, cache: bool = True):
        self.fusion = aligner.config.fusion
        key = graph_key(aligner) if cache else None
        self.sessions = {group: _session(aligner, group, threads, key) for group in GROUPS}

    def __call__(self, group: str, stage: int, cpr: torch.Tensor, state: torch.Tensor,
                 sparse_cpr: torch.Tensor | None = None, sparse_state: torch.Tensor | None = None,
                 present: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        tensors = [cpr, state]
        if self.fusion:
            if sparse_cpr is None:  # no source in this batch: the sparse branch off
                tensors += [cpr.new_zeros(len(cpr), 3, N_LANDMARKS, N_LANDMARKS), torch.zeros_like(state),
                            cpr.new_zeros(len(cpr))]
            else:
                tensors += [sparse_cpr, sparse_state, present]
        names = FUSED_NAMES if self.fusion else DENSE_NAMES
        feed = {name: tensor.detach().float().cpu().numpy() for name, tensor in zip(names, tensors, strict=True)}
        feed["stage"] = np.array(stage, dtype=np.int64)
        outputs = [torch.from_numpy(value) for value in self.sessions[group].run(None, feed)]
        return tuple(outputs if sparse_cpr is not None or not self.fusion else outputs[:2])


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
    """What an aligner's graphs depend on, hashed: its weights (not the folded copies of ``fused``), config and
    channel shape, torch's version and the opset."""
    digest = hashlib.sha256(f"{aligner.config.to_dict()} {tuple(aligner.channels.shape)} {torch.__version__} "
                            f"{OPSET}".encode())
    for name, value in aligner.state_dict().items():
        if ".folded." in name:
            continue
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _session(aligner: CPRAligner, group: str, threads: int | None, key: str | None):
    """A session for one group's graph: the cached one when it is there and agrees with torch, else a fresh
    export (written to the cache when ``key`` is given and the folder is writable). No spinning: torch runs
    between the calls."""
    path = cache_folder() / f"cpr-{key}-{group}.onnx" if key is not None else None
    session = _cached_session(path, aligner, group, threads) if path is not None else None
    if session is not None:
        return session
    buffer = io.BytesIO()
    export_group(aligner, group, buffer)
    if path is not None:
        _write_atomically(path, buffer.getvalue())
    return cpu_session(buffer.getvalue(), threads, spinning=False)


def _cached_session(path: Path, aligner: CPRAligner, group: str, threads: int | None):
    """The session of a cached graph, or None when there is none, or it cannot be read, is damaged or disagrees
    with torch."""
    try:
        graph = path.read_bytes()
    except OSError:  # absent, or a folder this user may not enter
        return None
    try:
        session = cpu_session(graph, threads, spinning=False)
        return session if _agrees(session, aligner, group) else None
    except Exception:  # noqa: BLE001 - onnxruntime's errors for a damaged or foreign graph share no class below it
        return None


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


def _agrees(session, aligner: CPRAligner, group: str) -> bool:
    """Whether a session gives the torch networks' outputs, within AGREEMENT, on a fixed random input (two
    faces, the second without a sparse source) at the first and the last stage."""
    generator = torch.Generator().manual_seed(0)
    channels, count = aligner.channels.shape
    hidden = aligner.config.hidden
    inputs = [torch.rand(2, channels, count, count, generator=generator), torch.rand(2, hidden, generator=generator)]
    names = DENSE_NAMES
    if aligner.config.fusion:
        inputs += [torch.rand(2, 3, N_LANDMARKS, N_LANDMARKS, generator=generator),
                   torch.rand(2, hidden, generator=generator), torch.tensor([1.0, 0.0])]
        names = FUSED_NAMES
    feed = {name: value.numpy() for name, value in zip(names, inputs, strict=True)}
    for stage in (0, aligner.config.rounds * aligner.config.stages - 1):
        with torch.inference_mode():
            expected = aligner.step_networks(group, stage, *inputs)
        actual = session.run(None, {"stage": np.array(stage, dtype=np.int64), **feed})
        if len(actual) != len(expected) or not all(
                got.shape == tuple(wanted.shape) and np.abs(got - wanted.numpy()).max() <= AGREEMENT
                for got, wanted in zip(actual, expected, strict=True)):
            return False
    return True
