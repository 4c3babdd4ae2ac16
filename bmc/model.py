"""Creating and loading classifiers, safely.

Only safetensors weights are ever loaded (``use_safetensors=True``): a ``pytorch_model.bin`` is a
pickle and unpickling a downloaded file can run arbitrary code. ``trust_remote_code`` is never set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel


class UnsafeModelError(ValueError):
    """The model folder offers only pickle weights (``.bin``/``.pt``), which bmc refuses to load."""


def check_safetensors(name_or_path: str) -> None:
    """Refuse a local folder that has pickle weights but no safetensors, with a clear message."""
    path = Path(name_or_path)
    if not path.is_dir():
        return  # a Hub id: from_pretrained(use_safetensors=True) refuses pickle-only repos itself
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    if pickles:
        raise UnsafeModelError(
            f"{path} holds only pickle weights ({', '.join(pickles)}); bmc loads safetensors only. "
            "Convert them yourself, from a source you trust, with model.save_pretrained(..., safe_serialization=True)."
        )
    raise FileNotFoundError(f"{path} has no model weights (*.safetensors)")


def load_for_training(
    name_or_path: str,
    id2label: dict[int, str],
    label2id: dict[str, int],
    ignore_mismatched_sizes: bool = False,
    drop_path_rate: float | None = None,
) -> PreTrainedModel:
    """A classification model with a head for ``id2label``, from a backbone or a classifier.

    ``ignore_mismatched_sizes`` lets a classifier trained on other classes be re-headed.
    """
    check_safetensors(name_or_path)
    config = AutoConfig.from_pretrained(name_or_path, id2label=id2label, label2id=label2id)
    if drop_path_rate is not None and hasattr(config, "drop_path_rate"):
        config.drop_path_rate = drop_path_rate
    return AutoModelForImageClassification.from_pretrained(
        name_or_path, config=config, ignore_mismatched_sizes=ignore_mismatched_sizes, use_safetensors=True,
        dtype=torch.float32,
    )


def load_classifier(name_or_path: str) -> tuple[PreTrainedModel, Any]:
    """A trained classifier and its image processor, in float32 and eval mode."""
    check_safetensors(name_or_path)
    model = AutoModelForImageClassification.from_pretrained(name_or_path, use_safetensors=True, dtype=torch.float32)
    processor = AutoImageProcessor.from_pretrained(name_or_path)
    return model.eval(), processor


def save_classifier(model: PreTrainedModel, processor: Any, out_dir: Path, fp16: bool = True) -> None:
    """Save weights (optionally as float16, halving the size) that still load as float32.

    The config records ``dtype: float32`` so that ``from_pretrained``/``pipeline`` upcast the
    stored half-precision weights instead of running the model in half precision on a CPU.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    to_save = model
    if fp16:
        import copy

        to_save = copy.deepcopy(model).to(torch.float16)
    to_save.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    update_config(out_dir, dtype="float32")


def update_config(model_dir: Path, **values: Any) -> None:
    """Set keys in a saved ``config.json`` (dtype, bmc's calibration) without re-saving the weights."""
    config_path = Path(model_dir) / "config.json"
    config = json.loads(config_path.read_text())
    config.update(values)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
