"""Shared fixtures (real data present, a tiny model); plain helpers and paths live in helpers.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import MATEK, SHARED

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# ONNX exports made by the tests (and by the apps they start) go to a throw-away folder, not ~/.cache/bmc.
_TEST_CACHE = None if "BMC_CACHE_DIR" in os.environ else tempfile.mkdtemp(prefix="bmc-test-cache-")
os.environ.setdefault("BMC_CACHE_DIR", _TEST_CACHE or "")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _TEST_CACHE:
        shutil.rmtree(_TEST_CACHE, ignore_errors=True)


SLOW_FIXTURES = {"app_url", "trained", "installed", "small_kaggle_folder", "predictor", "fake_hub"}
"""Fixtures that start the app, train a model or build a package: a test using one is ``slow``."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers that mean what they say: ``integration`` on every test that reads ../shared/data (it
    needs the ``shared_data`` fixture, directly or through another), ``slow`` on every test that
    trains, serves or builds; ``pytest -m "not slow"`` is the quick loop."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "shared_data" in fixtures:
            item.add_marker(pytest.mark.integration)
        if fixtures & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not MATEK.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real data missing at {SHARED}: CI runs the integration tests and needs ../shared/data beside the repository")
        pytest.skip(f"no ../shared/data at {SHARED}: integration test skipped (CI runs it)")
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
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=56,
        num_labels=3,
        id2label=id2label,
        label2id=label2id,
    )
    model = Dinov2ForImageClassification(config).eval()
    out = tmp_path_factory.mktemp("tiny_model")
    save_classifier(model, build_image_processor(56), out, fp16=False)
    return out
