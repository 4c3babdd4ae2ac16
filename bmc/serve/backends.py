"""Execution backends for a trained classifier: PyTorch, or an ONNX Runtime copy of it.

On a CPU, ONNX Runtime runs the same float32 graph faster than PyTorch eager mode (fused attention,
layer norm and GELU kernels; see ``bench/results.json``). bmc exports the loaded safetensors model
itself with ``torch.onnx.export`` — it never loads an ONNX file it did not write — and caches the
export under a name that includes the sha256 of the weights, so a changed model is re-exported.
Dynamic int8 quantisation is offered as an option only: it changes predictions, and its accuracy
cost is measured by the benchmark, not assumed.

Every runner returns two arrays from one forward pass: the logits and the *embedding*, the features
the classification head reads (for DINOv2 the class token beside the mean patch token). The learning
review (:mod:`bmc.count.learning`) fits its head on those embeddings, so a count never runs the model twice.

Attribution (``bmc.serve.explain``) needs gradients and always uses the PyTorch model.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:  # torch is imported where it is used: `python -m bmc` reads BACKENDS without it
    import torch  # lazy: `python -m bmc --help` reads BACKENDS without loading torch

import numpy as np

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
ONNX_LAYOUT = "emb1"
"""Part of the cached export's file name: an export from before the embedding output is not reused."""

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Normalised pixels (N, 3, H, W) → (logits (N, C), embeddings (N, D)), both float32."""


def with_embeddings(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` wrapped to return ``(logits, embeddings)``: the embedding is the input of its
    ``classifier`` layer, caught by a forward pre-hook (works for DINOv2, ViT and ConvNeXt heads alike)."""
    import torch  # lazy: `python -m bmc --help` reads BACKENDS without loading torch

    class WithEmbeddings(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            caught: list[torch.Tensor] = []
            head = cast(torch.nn.Module, self.inner.classifier)
            handle = head.register_forward_pre_hook(lambda _module, args: caught.append(args[0]))
            try:
                logits = self.inner(pixel_values=pixel_values).logits
            finally:
                handle.remove()
            return logits, caught[0].flatten(1)

    return WithEmbeddings(model).eval()


def cache_dir() -> Path:
    """Where exported ONNX copies live: ``$BMC_CACHE_DIR``, else ``~/.cache/bmc``."""
    return Path(os.environ.get("BMC_CACHE_DIR") or Path.home() / ".cache" / "bmc")


def torch_runner(model: torch.nn.Module) -> Runner:
    """Logits and embeddings from normalised pixels with the PyTorch model (no autograd bookkeeping)."""
    import torch  # lazy: `python -m bmc --help` reads BACKENDS without loading torch

    wrapped = with_embeddings(model)

    @torch.inference_mode()
    def forward(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, embeddings = wrapped(torch.from_numpy(pixels))
        return logits.float().numpy(), embeddings.float().numpy()

    return forward


def export_onnx(model: torch.nn.Module, size: int, path: Path) -> Path:
    """Write ``model`` as float32 ONNX (outputs ``logits`` and ``embeddings``) with a dynamic batch axis;
    atomic (temp file, then rename)."""
    import torch  # lazy: `python -m bmc --help` reads BACKENDS without loading torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        example = torch.zeros(2, 3, size, size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            torch.onnx.export(
                with_embeddings(model.eval()),
                (example,),
                tmp,
                dynamo=False,
                opset_version=17,
                input_names=["pixel_values"],
                output_names=["logits", "embeddings"],
                dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}, "embeddings": {0: "batch"}},
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def quantize_int8(fp32_path: Path, path: Path) -> Path:
    """Dynamic int8 quantisation of the linear layers' weights (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: optional, only for onnx-int8

    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        quantize_dynamic(str(fp32_path), tmp, weight_type=QuantType.QInt8)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def onnx_runner(model: torch.nn.Module, size: int, version: str, int8: bool = False) -> Runner:
    """Logits and embeddings from normalised pixels with ONNX Runtime, exporting (once) if no cached copy exists."""
    import onnxruntime as ort  # lazy: only the ONNX backends need it (0.3 s to import)

    stem = f"{type(model).__name__}-{version.replace(':', '-')}-{size}px-{ONNX_LAYOUT}"
    fp32 = cache_dir() / "onnx" / f"{stem}.onnx"
    if not fp32.is_file():
        log.info("exporting the model to ONNX (once per model): %s", fp32)
        export_onnx(model, size, fp32)
    path = fp32
    if int8:
        path = fp32.with_name(f"{stem}-int8.onnx")
        if not path.is_file():
            quantize_int8(fp32, path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, embeddings = session.run(["logits", "embeddings"], {"pixel_values": np.ascontiguousarray(pixels, dtype=np.float32)})
        return logits, embeddings

    return forward


def make_runner(backend: str, model: torch.nn.Module, size: int, version: str) -> tuple[str, Runner]:
    """The runner for ``backend``; ``auto`` is ONNX Runtime float32 (exact and faster on CPU) with a
    fall-back to PyTorch, logged, if onnxruntime is missing or the export fails."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch", torch_runner(model)
    if backend == "auto":
        try:
            return "onnx", onnx_runner(model, size, version)
        except Exception as err:  # noqa: BLE001 - any export/runtime failure falls back to the exact torch path
            log.warning("ONNX Runtime unavailable (%s: %s); using PyTorch", type(err).__name__, err)
            return "torch", torch_runner(model)
    return backend, onnx_runner(model, size, version, int8=backend == "onnx-int8")


def describe(backend: str) -> str:
    """One line for logs and the app footer."""
    return {"torch": "PyTorch float32", "onnx": "ONNX Runtime float32", "onnx-int8": "ONNX Runtime dynamic int8"}.get(backend, backend)
