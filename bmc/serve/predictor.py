"""Running a trained classifier: batched logits, calibrated probabilities, review flags."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bmc.calibration import flagged, softmax
from bmc.model import class_codes, load_classifier
from bmc.model_folder import FolderSettings
from bmc.serve.backends import Runner, describe, make_runner, torch_runner
from bmc.serve.guard import load_guard
from bmc.transforms import preprocess, processor_size


def batched_forward(
    runner: Runner, processor: Any, images: Sequence[Image.Image], n_classes: int, batch_size: int = 32, use_denoise: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and embeddings for RGB images from any backend runner, in batches (one forward per batch)."""
    out = [
        runner(preprocess(list(images[start : start + batch_size]), processor, use_denoise)) for start in range(0, len(images), batch_size)
    ]
    if not out:
        return np.zeros((0, n_classes), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


def predict_logits(
    model: Any, processor: Any, images: Sequence[Image.Image], batch_size: int = 32, use_denoise: bool = False
) -> np.ndarray:
    """Logits for RGB images with the PyTorch model (training and evaluation use this exact path)."""
    return batched_forward(torch_runner(model), processor, images, model.config.num_labels, batch_size, use_denoise)[0]


def dataset_logits(
    model: Any, processor: Any, dataset: Any, batch_size: int = 32, use_denoise: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for a bmc ``datasets.Dataset`` (columns ``image``, ``label``)."""
    logits, labels = [], []
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        images = [im.convert("RGB") for im in batch["image"]]
        logits.append(predict_logits(model, processor, images, batch_size, use_denoise))
        labels.extend(batch["label"])
    return np.concatenate(logits), np.asarray(labels)


@dataclass
class Prediction:
    """One image's calibrated class probabilities and whether it needs a human look."""

    probs: dict[str, float]
    top_code: str
    confidence: float
    flagged: bool
    logits: np.ndarray | None = field(default=None, repr=False, compare=False)
    """Uncalibrated logits, in the order of the model's classes (for the learning review)."""
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)
    """The features the model's head reads, from the same forward pass (see :mod:`bmc.serve.backends`)."""

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probs.items(), key=lambda kv: -kv[1])[:k]


def model_version(name_or_path: str, config: Any) -> str:
    """A short identifier of the exact weights: the Hub commit, or a hash of the local safetensors."""
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return commit[:12]
    # the model's own weight files only (model.safetensors, or its shards): a file stored beside them, such as
    # the single-cell check of bmc.serve.guard, is not part of the weights
    weights = sorted(Path(name_or_path).glob("model*.safetensors")) or sorted(Path(name_or_path).glob("*.bin"))
    digest = hashlib.sha256()
    for w in weights:
        with open(w, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:12] if weights else "unknown"


class Predictor:
    """A loaded model plus its calibration: the one object the app and the CLI predict with."""

    def __init__(self, name_or_path: str, backend: str = "auto", allow_pickle: bool = False, revision: str | None = None):
        """``backend``: ``auto`` (ONNX Runtime float32 if it loads, else PyTorch), ``torch``, ``onnx``,
        or ``onnx-int8`` (faster, but not identical predictions: see the benchmark). ``allow_pickle``:
        see :mod:`bmc.model`. ``revision``: branch, tag or commit of a Hub model."""
        self.name = name_or_path
        self.model, self.processor = load_classifier(name_or_path, allow_pickle, revision)
        cfg = self.model.config
        self.codes = class_codes(self.model)
        settings = FolderSettings.from_config(cfg)
        self.temperature = settings.temperature
        self.threshold = settings.review_threshold
        self.use_denoise = settings.denoise
        self.validation_flagged = settings.validation_flagged
        """Share of validation images the threshold flags: the baseline a count is compared with (:mod:`bmc.count.learning`)."""
        self.version = model_version(name_or_path, cfg)
        self.backend, self.runner = make_runner(backend, self.model, processor_size(self.processor), self.version)
        self.guard = load_guard(name_or_path, self.version) if Path(name_or_path).is_dir() else None
        """The model's own single-cell check (:mod:`bmc.serve.guard`), when ``bmc guard`` fitted one for these weights."""
        self.backend_description = describe(self.backend)

    def forward(self, images: Sequence[Image.Image], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Uncalibrated logits and embeddings from this predictor's backend (one pass)."""
        return batched_forward(self.runner, self.processor, images, len(self.codes), batch_size, self.use_denoise)

    def logits(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Uncalibrated logits from this predictor's backend."""
        return self.forward(images, batch_size)[0]

    def predictions(self, probs: np.ndarray, logits: np.ndarray | None = None, embeddings: np.ndarray | None = None) -> list[Prediction]:
        """Calibrated probabilities (rows in the order of :attr:`codes`) as flagged predictions: the one
        place where the review threshold turns a probability into a flag."""
        out = []
        for i, row in enumerate(probs):
            top = int(row.argmax())
            out.append(
                Prediction(
                    probs={c: float(p) for c, p in zip(self.codes, row)},
                    top_code=self.codes[top],
                    confidence=float(row[top]),
                    flagged=bool(flagged(row[top], self.threshold)),
                    logits=None if logits is None else logits[i],
                    embedding=None if embeddings is None else embeddings[i],
                )
            )
        return out

    def predict(self, images: Sequence[Image.Image], batch_size: int = 32) -> list[Prediction]:
        """Calibrated, flagged predictions; each keeps its logits and embedding for the learning review."""
        logits, embeddings = self.forward(images, batch_size)
        return self.predictions(softmax(logits, self.temperature), logits, embeddings)
