"""The tuned tail computes what the model computes, and goes back into the model intact."""

import numpy as np
import torch
from PIL import Image

from bmc.inference import Predictor
from bmc.lab_tuning import Tail, block_inputs, install, supports, tune
from bmc.transforms import preprocess


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)) for _ in range(n)]


def test_the_tail_reproduces_the_model_and_installs_back(tiny_model_dir):
    predictor = Predictor(str(tiny_model_dir), "torch")
    model = predictor.model
    assert supports(model)
    images = _images(6)
    hidden, logits = block_inputs(model, predictor.processor, images)
    tail = Tail(model, n_classes=4)  # one class more than the model: its row starts at zero
    out = tail.logits(hidden)
    assert np.allclose(out[:, :3], logits, atol=2e-2)  # float16 cache
    assert np.allclose(out[:, 3], 0.0)

    tuned = tune(model, 4, hidden[:4], np.array([3, 3, 0, 1]), hidden[4:], logits[4:], epochs=3)
    expected = tuned.logits(hidden)
    assert not np.allclose(expected, out, atol=1e-3)  # it learnt something
    installed = install(model, tuned)
    pixels = torch.from_numpy(preprocess(images, predictor.processor))
    with torch.inference_mode():
        direct = installed(pixel_values=pixels).logits.numpy()
    assert direct.shape == (6, 4) and np.allclose(direct, expected, atol=5e-2)
