"""The CPR aligner's networks through ONNX: export them (``cprfa export-onnx``) and run them with onnxruntime
(``--runtime onnx``).

The networks of a step (``CPRAligner.step_networks``: the DAFI branch's CNN and GRU and, with fusion, the
sparse branch's and their crossing) become one graph per group. Its first input is the stage (an int64
scalar), which picks that stage's batch-norm statistics: the stages share every other weight, so one graph
per stage would repeat them. The batch size is dynamic. Everything between the networks (the CPRs, Y^G,
consistency-aware updating, the translation step) stays in torch, so ``OnnxStepNetworks`` stands in for
``step_networks`` through ``CPRAligner.runtime``. With fusion, a batch without any sparse source runs the
fused graphs with the sparse branch switched off (zero input, ``present`` 0), which gives what the DAFI
branch alone gives.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cprfa.cpr.regressor import GROUPS, CPRAligner
from cprfa.cpr.sparse import N_LANDMARKS
from cprfa.dafi.onnx import OPSET, cpu_session, require

DENSE_NAMES = ("cpr", "state")
FUSED_NAMES = ("cpr", "state", "sparse_cpr", "sparse_state", "present")


class _GroupGraph(nn.Module):
    def __init__(self, aligner: CPRAligner, group: str):
        super().__init__()
        self.aligner, self.group = aligner, group

    def forward(self, stage: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.aligner.step_networks(self.group, stage, *tensors)


def export_group(aligner: CPRAligner, group: str, target: str | Path | io.BytesIO) -> None:
    """Write the networks of one group's steps (every stage) as an ONNX graph to a file or a buffer."""
    require("onnx")
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
    """onnxruntime sessions answering like ``CPRAligner.step_networks``; set it as the aligner's ``runtime``."""

    def __init__(self, aligner: CPRAligner, threads: int | None = None):
        self.fusion = aligner.config.fusion
        self.sessions = {}
        for group in GROUPS:
            buffer = io.BytesIO()
            export_group(aligner, group, buffer)
            # no spinning: torch runs between the calls
            self.sessions[group] = cpu_session(buffer.getvalue(), threads, spinning=False)

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
