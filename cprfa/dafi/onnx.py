"""The HS-U-Net and the landmark refiner through ONNX: export them (``cprfa export-onnx``) and run them with
onnxruntime (``--runtime onnx``).

The HS-U-Net's graph takes the network's input (B, 3, S, S) and returns its full-resolution output group
(B, 4, S, S: DAFI codes and foreground logit) and the landmark heatmaps (B, 68, h, w); the refiner's takes the
detail crops (B, 3, R, R) and the points (B, 68, 2) and returns the refined points. The batch size is dynamic.
``OnnxNetwork`` and ``OnnxRefiner`` stand in for the torch networks inside ``DafiEstimator``, so crops,
retrieval and everything after are shared.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from cprfa.dafi.network import HSUNet
from cprfa.dafi.refine import LandmarkRefiner

OPSET = 17


class _Exported(nn.Module):
    """The network with the outputs the estimator uses (the last group and the heatmaps)."""

    def __init__(self, network: HSUNet):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        groups, heatmaps = self.network(images)
        return groups[-1], heatmaps


def export_hsunet(network: HSUNet, input_size: int, target: str | Path | io.BytesIO) -> None:
    """Write the network as an ONNX graph to a file or a buffer."""
    example = torch.zeros(1, 3, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter, still supported
        torch.onnx.export(_Exported(network).eval(), (example,), target, input_names=["image"],
                          output_names=["full", "heatmaps"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={name: {0: "batch"} for name in ("image", "full", "heatmaps")})


class OnnxNetwork:
    """An onnxruntime session that answers like ``HSUNet.forward``: ([full], heatmaps) as torch tensors."""

    def __init__(self, network: HSUNet, input_size: int, threads: int | None = None):
        buffer = io.BytesIO()
        export_hsunet(network, input_size, buffer)
        self.session = cpu_session(buffer.getvalue(), threads, spinning=False)

    def __call__(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        full, heatmaps = self.session.run(None, {"image": images.detach().cpu().float().numpy()})
        return [torch.from_numpy(full)], torch.from_numpy(heatmaps)

    def to(self, _device) -> OnnxNetwork:
        return self  # onnxruntime's CPU provider

    def eval(self) -> OnnxNetwork:
        return self


def export_refiner(refiner: LandmarkRefiner, detail_size: int, target: str | Path | io.BytesIO) -> None:
    """Write the landmark refiner as an ONNX graph to a file or a buffer."""
    example = (torch.zeros(1, 3, detail_size, detail_size), torch.full((1, 68, 2), detail_size / 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(refiner.eval(), example, target, input_names=["image", "points"], output_names=["refined"],
                          opset_version=OPSET, dynamo=False,
                          dynamic_axes={name: {0: "batch"} for name in ("image", "points", "refined")})


class OnnxRefiner:
    """An onnxruntime session that answers like ``LandmarkRefiner.forward``, with its ``config``."""

    def __init__(self, refiner: LandmarkRefiner, detail_size: int, threads: int | None = None):
        buffer = io.BytesIO()
        export_refiner(refiner, detail_size, buffer)
        self.config = refiner.config
        self.session = cpu_session(buffer.getvalue(), threads, spinning=False)

    def __call__(self, images: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        feeds = {"image": images.detach().cpu().float().numpy(), "points": points.detach().cpu().float().numpy()}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def cpu_session(graph: bytes, threads: int | None = None, spinning: bool = True, arena: bool = False):
    """An onnxruntime CPU session for a serialized graph, on ``threads`` (default: torch's), by default without
    the memory arena (it keeps each session's largest buffers for good: too much memory for a network's batches;
    ``arena`` for a graph of one small fixed batch, whose buffers it then need not ask the system for again).
    With ``spinning`` its idle threads spin while a run lasts (the quickest hand-over between small operations)
    and stop when it ends, so as not to take the cores from the torch work that follows."""
    import onnxruntime as ort  # here, so that importing cprfa does not load it
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.enable_cpu_mem_arena = arena
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
