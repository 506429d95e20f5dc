"""Convert MediaPipe's short-range BlazeFace (``face_detection_short_range.tflite``) to cprfa's torch weights.

A developer script, not part of the package: it needs the ``tflite`` package (the TFLite flatbuffer schema) and
the MediaPipe wheel, neither of which cprfa needs at run time.

    pip download mediapipe==0.10.14 --no-deps -d /tmp/mp
    python tools/convert_blazeface.py --wheel /tmp/mp/mediapipe-0.10.14-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl

It reads the .tflite from the wheel, checks that its graph is the architecture of ``cprfa.detect.blazeface``
(op by op: strides, padding, pooled and channel-padded shortcuts), moves the float16 weights to torch's layout
(CONV_2D kernels OHWI -> OIHW, DEPTHWISE_CONV_2D kernels 1HWO -> O1HW; values unchanged, still float16) and
writes ``cprfa/detect/assets/blazeface_short.pt``, ``blazeface_short.json`` (provenance and the sha256 of the
.pt, which ``FaceDetector`` checks; a ``face_box`` section written by ``tools/fit_blazeface_box.py`` is kept)
and ``LICENSE-MediaPipe.txt``.

``--verify IMAGE...`` (needs ``pip install ai-edge-litert``) runs the .tflite with LiteRT and the converted
network on the same inputs (each image letterboxed to 128 × 128, plus random noise) and prints the largest
differences of the raw outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import tflite
import torch

from cprfa.detect.blazeface import BLOCK_STRIDE_2, BLOCK_WIDTHS, BlazeFace

MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"
ASSETS = Path(__file__).resolve().parents[1] / "cprfa" / "detect" / "assets"
FORMAT, VERSION = "cprfa-blazeface", 1
LICENCE = "Apache-2.0 (MediaPipe)"
OP_NAMES = {code: name for name, code in vars(tflite.BuiltinOperator).items() if not name.startswith("_")}
SAME = tflite.Padding.SAME

NOTICE = """\
The face detector weights in this folder (blazeface_short.pt) are converted from MediaPipe's short-range
BlazeFace face detection model, "face_detection_short_range.tflite", as distributed by Google in the
MediaPipe Python wheel {wheel}
(path in the wheel: {member}; sha256 {sha256}).

MediaPipe: https://github.com/google-ai-edge/mediapipe
Copyright The MediaPipe Authors (Google LLC).

Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance
with the License. You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed under the License is
distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See
the License for the specific language governing permissions and limitations under the License.

Changes made by cprfa: the float16 weights were moved from TFLite's tensor layout to PyTorch's (values
unchanged) and saved with torch.save; the network, anchors, box decoding and weighted non-maximum suppression
are re-implemented in cprfa/detect/blazeface.py. The cprfa code itself is under cprfa's MIT licence.
"""


def torch_name(layer: str) -> str:
    """TFLite layer name -> parameter prefix in cprfa.detect.blazeface.BlazeFace."""
    if layer == "conv2d":
        return "stem"
    if layer.startswith("depthwise_conv2d"):
        return f"blocks.{int(layer.rpartition('_')[2]) if layer != 'depthwise_conv2d' else 0}.depthwise"
    if layer.startswith("conv2d_"):
        return f"blocks.{int(layer.rpartition('_')[2]) - 1}.pointwise"
    return {"classificator_8": "classifier_8", "classificator_16": "classifier_16",
            "regressor_8": "regressor_8", "regressor_16": "regressor_16"}[layer]


def read_graph(data: bytes):
    """The ops [(name, options, input tensor names, output tensor names)] and the constant tensors
    {name: float32 array} (float16 buffers dequantized) of a single-subgraph .tflite."""
    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)

    def name(index: int) -> str:
        return graph.Tensors(index).Name().decode()

    constants = {}
    for index in range(graph.TensorsLength()):
        tensor = graph.Tensors(index)
        buffer = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(buffer, np.ndarray) and buffer.size:
            dtype = {tflite.TensorType.FLOAT16: np.float16, tflite.TensorType.FLOAT32: np.float32,
                     tflite.TensorType.INT32: np.int32}[tensor.Type()]
            constants[name(index)] = np.frombuffer(buffer.tobytes(), dtype).reshape(tensor.ShapeAsNumpy())
    ops = []
    for index in range(graph.OperatorsLength()):
        op = graph.Operators(index)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = OP_NAMES[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        options_class = {"CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
                         "MAX_POOL_2D": tflite.Pool2DOptions, "ADD": tflite.AddOptions}.get(kind)
        options = None
        if options_class is not None:
            table = op.BuiltinOptions()
            options = options_class()
            options.Init(table.Bytes, table.Pos)
        inputs = [name(op.Inputs(i)) for i in range(op.InputsLength()) if op.Inputs(i) >= 0]
        outputs = [name(op.Outputs(i)) for i in range(op.OutputsLength())]
        ops.append((kind, options, inputs, outputs))
    return ops, constants


def convert(ops, constants) -> dict[str, torch.Tensor]:
    """Check the graph against BlazeFace and return its state dict (float16, torch layout)."""
    dequantized = {}
    producer = {}
    for kind, options, inputs, outputs in ops:
        producer[outputs[0]] = (kind, options, inputs)
        if kind == "DEQUANTIZE":
            dequantized[outputs[0]] = constants[inputs[0]]
    state = {}
    for kind, options, inputs, outputs in ops:
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        layer = outputs[0]
        prefix = torch_name(layer)
        kernel, bias = dequantized[inputs[1]], dequantized[inputs[2]]
        fused = options.FusedActivationFunction()
        dilation = (options.DilationHFactor(), options.DilationWFactor())
        if fused != tflite.ActivationFunctionType.NONE or dilation != (1, 1):
            raise SystemExit(f"{layer}: unexpected fused activation {fused} or dilation {dilation}")
        stride = (options.StrideH(), options.StrideW())
        if kind == "DEPTHWISE_CONV_2D":
            block = int(prefix.split(".")[1])
            want = 2 if block in BLOCK_STRIDE_2 else 1
            if options.DepthMultiplier() != 1 or stride != (want, want) or options.Padding() != SAME:
                raise SystemExit(f"{layer}: expected a 3×3 'SAME' depthwise convolution at stride {want}")
            weight = np.transpose(kernel, (3, 0, 1, 2))  # 1HWO -> O1HW
        else:
            want = 2 if prefix == "stem" else 1
            size = 5 if prefix == "stem" else 1
            if stride != (want, want) or kernel.shape[1:3] != (size, size) or (size > 1 and options.Padding() != SAME):
                raise SystemExit(f"{layer}: expected a {size}×{size} convolution at stride {want}")
            weight = np.transpose(kernel, (0, 3, 1, 2))  # OHWI -> OIHW
        state[f"{prefix}.weight"] = torch.from_numpy(np.array(weight, order="C")).half()
        state[f"{prefix}.bias"] = torch.from_numpy(np.array(bias)).half()
    check_shortcuts(ops, producer, constants)
    return state


def check_shortcuts(ops, producer, constants) -> None:
    """Each ADD joins block k's 1×1 convolution with its shortcut: the block input, 2×2 max-pooled at stride 2,
    zero-padded with the extra channels at the end when the block widens."""
    adds = [(inputs, outputs) for kind, _, inputs, outputs in ops if kind == "ADD"]
    if len(adds) != len(BLOCK_WIDTHS):
        raise SystemExit(f"expected {len(BLOCK_WIDTHS)} residual additions, found {len(adds)}")
    widths_in = (BLOCK_WIDTHS[0],) + BLOCK_WIDTHS[:-1]
    for block, (inputs, _) in enumerate(adds):
        shortcut, branch = inputs
        if producer[branch][0] != "CONV_2D" or torch_name(branch) != f"blocks.{block}.pointwise":
            raise SystemExit(f"addition {block}: expected the output of blocks.{block}.pointwise, got {branch}")
        extra = BLOCK_WIDTHS[block] - widths_in[block]
        if extra:
            kind, _, pad_inputs = producer[shortcut]
            paddings = constants[pad_inputs[1]].tolist()
            if kind != "PAD" or paddings != [[0, 0], [0, 0], [0, 0], [0, extra]]:
                raise SystemExit(f"addition {block}: expected {extra} zero channels padded at the end")
            shortcut = pad_inputs[0]
        pooled = shortcut in producer and producer[shortcut][0] == "MAX_POOL_2D"
        if pooled != (block in BLOCK_STRIDE_2):
            raise SystemExit(f"addition {block}: max-pooled shortcut {pooled}, stride-2 block {not pooled}")
        if pooled:
            options = producer[shortcut][1]
            window = (options.FilterHeight(), options.FilterWidth(), options.StrideH(), options.StrideW())
            if window != (2, 2, 2, 2):
                raise SystemExit(f"addition {block}: expected 2×2 max pooling at stride 2, got {window}")


def letterbox(image: np.ndarray, size: int = 128) -> np.ndarray:
    import cv2

    scale = size / max(image.shape[:2])
    height, width = round(image.shape[0] * scale), round(image.shape[1] * scale)
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    out[top:top + height, left:left + width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return out


def verify(data: bytes, network: BlazeFace, images: list[Path]) -> dict:
    """Largest absolute differences between LiteRT's and the converted network's raw outputs."""
    import cv2
    from ai_edge_litert.interpreter import Interpreter

    from cprfa.detect.blazeface import to_input

    inputs = [letterbox(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)) for path in images]
    rng = np.random.default_rng(0)
    inputs += [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(2)]
    batch = np.stack(inputs)
    interpreter = Interpreter(model_content=data, num_threads=1)
    interpreter.allocate_tensors()
    outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    reference_regressors, reference_logits = [], []
    for crop in batch:
        x = (crop.astype(np.float32) / 127.5 - 1.0)[None]
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        reference_regressors.append(interpreter.get_tensor(outputs["regressors"])[0])
        reference_logits.append(interpreter.get_tensor(outputs["classificators"])[0, :, 0])
    with torch.inference_mode():
        regressors, logits = network(to_input(torch.from_numpy(batch)))
    regressors_ref, logits_ref = np.stack(reference_regressors), np.stack(reference_logits)
    result = {
        "inputs": f"{len(images)} images letterboxed to 128 × 128 and 2 of uniform noise",
        "max_abs_diff_regressors": float(np.abs(regressors.numpy() - regressors_ref).max()),
        "max_abs_diff_logits": float(np.abs(logits.numpy() - logits_ref).max()),
        "regressors_range": [float(regressors_ref.min()), float(regressors_ref.max())],
        "logits_range": [float(logits_ref.min()), float(logits_ref.max())],
        "best_logit_per_input": [round(float(v), 3) for v in logits_ref.max(axis=1)],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, required=True, help="the mediapipe wheel (.whl)")
    parser.add_argument("--out", type=Path, default=ASSETS)
    parser.add_argument("--verify", type=Path, nargs="*", default=None, metavar="IMAGE",
                        help="compare with LiteRT on these images (needs ai-edge-litert)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with zipfile.ZipFile(args.wheel) as wheel:
        data = wheel.read(MEMBER)
    sha256 = hashlib.sha256(data).hexdigest()
    source = {"wheel": args.wheel.name, "path": MEMBER, "sha256": sha256}
    ops, constants = read_graph(data)
    state = convert(ops, constants)
    network = BlazeFace()
    network.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    network.eval()

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "blazeface_short.pt"
    torch.save({"format": FORMAT, "version": VERSION, "source": source, "licence": LICENCE,
                "input_size": 128, "normalization": "RGB / 127.5 - 1", "state_dict": state}, weights)
    record_path = args.out / "blazeface_short.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.update({
        "weights": weights.name, "format": FORMAT, "version": VERSION,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "source": source, "licence": LICENCE,
        "conversion": "tools/convert_blazeface.py: float16 weights of the .tflite in torch layout, values unchanged",
    })
    if args.verify is not None:
        record["verification"] = verify(data, network, args.verify)
        print(json.dumps(record["verification"], indent=1))
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    (args.out / "LICENSE-MediaPipe.txt").write_text(NOTICE.format(wheel=args.wheel.name, member=MEMBER,
                                                                   sha256=sha256))
    print(f"wrote {weights} ({weights.stat().st_size:,} bytes, {len(state)} tensors), {record_path.name}, "
          f"LICENSE-MediaPipe.txt; source sha256 {sha256}")


if __name__ == "__main__":
    main()
