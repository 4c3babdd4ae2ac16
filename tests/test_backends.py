"""Execution backends: the ONNX Runtime copy must predict what the PyTorch model predicts."""

import numpy as np
import pytest
from PIL import Image

from bmc.serve import backends
from bmc.serve.predictor import Predictor


@pytest.fixture
def cells():
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (70, 60 + i, 3), dtype=np.uint8)) for i in range(5)]


def test_onnx_float32_matches_torch(tiny_model_dir, cells):
    torch_p = Predictor(str(tiny_model_dir), "torch")
    onnx_p = Predictor(str(tiny_model_dir), "onnx")
    assert (torch_p.backend, onnx_p.backend) == ("torch", "onnx")
    a, b = torch_p.logits(cells, batch_size=2), onnx_p.logits(cells, batch_size=3)  # dynamic batch sizes
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert [p.top_code for p in torch_p.predict(cells)] == [p.top_code for p in onnx_p.predict(cells)]


def test_auto_prefers_onnx_and_reuses_the_cached_export(tiny_model_dir):
    first = Predictor(str(tiny_model_dir))
    assert first.backend == "onnx"
    exported = sorted((backends.cache_dir() / "onnx").glob(f"*{first.version.replace(':', '-')}*.onnx"))
    assert exported, "the export is cached under the weights' hash"
    mtimes = {p: p.stat().st_mtime_ns for p in exported}
    Predictor(str(tiny_model_dir))
    assert {p: p.stat().st_mtime_ns for p in exported} == mtimes


def test_auto_falls_back_to_torch_when_onnx_fails(tiny_model_dir, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no runtime here")

    monkeypatch.setattr(backends, "onnx_runner", broken)
    p = Predictor(str(tiny_model_dir))
    assert p.backend == "torch"
    assert "using PyTorch" in caplog.text


def test_int8_is_an_approximation_of_the_float_model(tiny_model_dir, cells):
    exact = Predictor(str(tiny_model_dir), "torch").logits(cells)
    int8 = Predictor(str(tiny_model_dir), "onnx-int8")
    assert int8.backend == "onnx-int8"
    approx = int8.logits(cells)
    assert not np.allclose(approx, exact, atol=1e-6)  # really quantised, not the float graph again
    assert np.corrcoef(approx.ravel(), exact.ravel())[0, 1] > 0.9  # ... and still close to it


def test_unknown_backend_is_named(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        Predictor(str(tiny_model_dir), "tensorrt")
