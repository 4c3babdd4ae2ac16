"""Creating and loading classifiers, safely.

Only safetensors weights are loaded by default (``use_safetensors=True``): a ``pytorch_model.bin``
is a pickle and unpickling a downloaded file can run arbitrary code. A user who trusts a pickle-only
model can pass ``allow_pickle=True`` (``--allow-pickle-weights``); even then torch's weights-only
unpickler is used, which refuses anything but tensors, and a file holding other objects is refused
with :class:`UnsafeModelError`. ``trust_remote_code`` is never set.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel

log = logging.getLogger(__name__)


class UnsafeModelError(ValueError):
    """The model folder offers only pickle weights (``.bin``/``.pt``), which bmc refuses to load."""


class ModelNotFoundError(ValueError):
    """Neither a local model folder nor a Hub id that could be fetched (offline, say)."""


TRAINING_HINT = (
    "Without a network, build the DINOv2 ViT-S/14 backbone locally with `make base` (or `bmc base-weights --out "
    ".cache/dinov2-small`) and pass --model_name_or_path .cache/dinov2-small; a bmc model folder (models/…) works too."
)
SERVING_HINT = "Give --model a bmc model folder (e.g. models/bmc-dinov2s-matek-pbc13, the default) or a Hub id reachable from here."


def _not_found(name_or_path: str, exc: Exception, hint: str = TRAINING_HINT) -> ModelNotFoundError:
    """A message that says why a model could not be had and what to do, instead of transformers' generic one."""
    if Path(name_or_path).exists() or looks_local(name_or_path):
        return ModelNotFoundError(f"{name_or_path}: not a model folder ({str(exc).splitlines()[0][:160]}). {hint}")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    why = "HF_HUB_OFFLINE=1 is set" if offline else "the Hub is unreachable from here, or there is no such repository"
    return ModelNotFoundError(f"{name_or_path} is not a local folder and could not be fetched from the Hugging Face Hub ({why}). {hint}")


def looks_local(name_or_path: str) -> bool:
    """Whether a model name can only mean a local path: it starts with ``.``, ``/`` or ``~``, has more than one ``/``,
    or its first part is a folder here (``models/typo``). A Hub id is ``owner/name``, and ``models/`` is no owner."""
    first = name_or_path.split("/", 1)[0]
    return (
        name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or (name_or_path.count("/") == 1 and Path(first).is_dir())
    )


def check_safetensors(name_or_path: str, allow_pickle: bool = False, hint: str = SERVING_HINT) -> None:
    """Refuse a local folder that has pickle weights but no safetensors, and a local path that does not exist,
    at once with a clear message (no Hub lookup, which spends close to a minute on retries without a network)."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        if looks_local(name_or_path):
            raise ModelNotFoundError(f"{name_or_path}: no such folder. {hint}")
        return  # a Hub id: from_pretrained(use_safetensors=True) refuses pickle-only repos itself
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    if pickles and allow_pickle:
        log.warning("%s: loading pickle weights (%s) with torch's weights-only unpickler, as asked", path, ", ".join(pickles))
        return
    if pickles:
        raise UnsafeModelError(
            f"{path} holds only pickle weights ({', '.join(pickles)}); bmc loads safetensors only. "
            "Convert them yourself, from a source you trust, with model.save_pretrained(...) (which writes safetensors), "
            "or pass --allow-pickle-weights if you trust the file."
        )
    raise FileNotFoundError(f"{path} has no model weights (*.safetensors)")


def _from_pretrained(name_or_path: str, allow_pickle: bool, revision: str | None, **kwargs: Any) -> PreTrainedModel:
    """``from_pretrained`` with bmc's weight policy; a pickle with non-tensor objects is refused by name."""
    try:
        return AutoModelForImageClassification.from_pretrained(
            name_or_path, use_safetensors=None if allow_pickle else True, dtype=torch.float32, revision=revision or "main", **kwargs
        )
    except pickle.UnpicklingError as exc:
        raise UnsafeModelError(
            f"{name_or_path}: the pickle weights hold objects other than tensors (possibly code); refused. "
            f"({str(exc).splitlines()[0][:120]})"
        ) from None


def load_for_training(
    name_or_path: str,
    id2label: dict[int, str],
    label2id: dict[str, int],
    ignore_mismatched_sizes: bool = False,
    drop_path_rate: float | None = None,
    allow_pickle: bool = False,
    revision: str | None = None,
) -> PreTrainedModel:
    """A classification model with a head for ``id2label``, from a backbone or a classifier.

    ``ignore_mismatched_sizes`` lets a classifier trained on other classes be re-headed;
    ``revision`` pins a Hub model to a branch, tag or commit.
    """
    check_safetensors(name_or_path, allow_pickle, TRAINING_HINT)
    try:
        config = AutoConfig.from_pretrained(name_or_path, id2label=id2label, label2id=label2id, revision=revision or "main")
    except OSError as exc:
        raise _not_found(name_or_path, exc) from None
    if drop_path_rate is not None and hasattr(config, "drop_path_rate"):
        config.drop_path_rate = drop_path_rate
    return _from_pretrained(name_or_path, allow_pickle, revision, config=config, ignore_mismatched_sizes=ignore_mismatched_sizes)


def class_codes(model: PreTrainedModel) -> list[str]:
    """A classifier's class codes in output order (transformers makes ``id2label``'s keys int on load)."""
    id2label = cast(dict[int, str], model.config.id2label)
    return [id2label[i] for i in range(len(id2label))]


def load_classifier(name_or_path: str, allow_pickle: bool = False, revision: str | None = None) -> tuple[PreTrainedModel, Any]:
    """A trained classifier and its image processor, in float32 and eval mode."""
    check_safetensors(name_or_path, allow_pickle)
    try:
        model = _from_pretrained(name_or_path, allow_pickle, revision)
    except OSError as exc:
        raise _not_found(name_or_path, exc, SERVING_HINT) from None
    processor = AutoImageProcessor.from_pretrained(name_or_path, revision=revision or "main")
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
        # transformers decorates PreTrainedModel.to with @wraps(nn.Module.to), which hides its bound self from mypy
        to_save = copy.deepcopy(model).to(torch.float16)  # type: ignore[arg-type]
    to_save.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    update_config(out_dir, dtype="float32")


def update_config(model_dir: Path, **values: Any) -> None:
    """Set keys in a saved ``config.json`` (dtype, bmc's calibration) without re-saving the weights."""
    config_path = Path(model_dir) / "config.json"
    config = json.loads(config_path.read_text())
    config.update(values)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
