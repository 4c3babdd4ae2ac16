"""Shared fixtures: paths to the real data in ../shared/data, tiny models, generated bad files."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bmc.constants import BUNDLED_MODEL_NAME

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# ONNX exports made by the tests (and by the apps they start) go to a throw-away folder, not ~/.cache/bmc.
_TEST_CACHE = None if "BMC_CACHE_DIR" in os.environ else tempfile.mkdtemp(prefix="bmc-test-cache-")
os.environ.setdefault("BMC_CACHE_DIR", _TEST_CACHE or "")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _TEST_CACHE:
        shutil.rmtree(_TEST_CACHE, ignore_errors=True)

ROOT = Path(__file__).resolve().parent.parent
SHARED = (ROOT.parent / "shared" / "data").resolve()
MATEK = SHARED / "bone-marrow-cells"
PBC = SHARED / "pbc-external"
PBC_TRAIN = SHARED / "pbc-train"
BCCD = SHARED / "external-wbc" / "bccd"
UNSEEN = SHARED / "unseen-classes"
BUNDLED = ROOT / "models" / BUNDLED_MODEL_NAME


def matek_images(code: str, n: int) -> list[Path]:
    """The first ``n`` real images of a class (sorted: the same files on every machine)."""
    return sorted((MATEK / "bone_marrow_cell_dataset" / code).rglob("*.jpg"))[:n]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not MATEK.is_dir():
        pytest.fail(f"real data missing at {SHARED}: the integration tests need ../shared/data beside the repository")
    return SHARED


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer DINOv2 classifier over three Matek classes (fast, not accurate)."""
    import torch
    from transformers import Dinov2Config, Dinov2ForImageClassification

    from bmc.labels import label_maps
    from bmc.model import save_classifier
    from bmc.transforms import build_image_processor

    torch.manual_seed(0)
    id2label, label2id = label_maps(["BLA", "LYT", "NGS"])
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=14,
                          image_size=56, num_labels=3, id2label=id2label, label2id=label2id)
    model = Dinov2ForImageClassification(config).eval()
    out = tmp_path_factory.mktemp("tiny_model")
    save_classifier(model, build_image_processor(56), out, fp16=False)
    return out


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (64, 64), mode: str = "RGB", **save: object) -> bytes:
    """A small generated image in any format/mode, for input-handling tests."""
    rng = np.random.default_rng(0)
    if mode in ("I;16",):
        img = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()
