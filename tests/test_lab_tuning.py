"""The tuned tail computes what the model computes, and goes back into the model intact."""

import numpy as np
import torch
from PIL import Image

from bmc.lab.tuning import Tail, TuningConfig, block_inputs, install, supports, tune
from bmc.serve.predictor import Predictor
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

    tuned = tune(model, 4, hidden[:4], np.array([3, 3, 0, 1]), hidden[4:], logits[4:], config=TuningConfig(epochs=3))
    expected = tuned.logits(hidden)
    assert not np.allclose(expected, out, atol=1e-3)  # it learnt something
    installed = install(model, tuned)
    pixels = torch.from_numpy(preprocess(images, predictor.processor))
    with torch.inference_mode():
        direct = installed(pixel_values=pixels).logits.numpy()
    assert direct.shape == (6, 4) and np.allclose(direct, expected, atol=5e-2)


def test_each_lab_cell_is_learnt_in_its_orientations_and_scored_as_given(tiny_model_dir):
    from bmc.lab.tuning import as_given, lab_inputs, orientations

    picture = _images(1, seed=3)[0]
    looks = orientations(picture, 8)
    assert np.array_equal(np.asarray(looks[0]), np.asarray(picture))
    assert len({np.asarray(v).tobytes() for v in looks}) == 8  # a random picture has no symmetry: 8 different looks

    predictor = Predictor(str(tiny_model_dir), "torch")
    images = _images(5, seed=1)
    views = lab_inputs(predictor.model, predictor.processor, images, config=TuningConfig(lab_views=4))
    plain, _ = block_inputs(predictor.model, predictor.processor, images)
    assert views.shape == (5, 4, *plain.shape[1:]) and torch.equal(as_given(views), plain)
    tail = tune(predictor.model, 3, views[:3], np.array([0, 1, 2]), plain[3:], np.zeros((2, 3), np.float32), config=TuningConfig(epochs=2))
    assert tail.logits(as_given(views)).shape == (5, 3)


def test_a_soup_is_the_average_of_its_fine_tunings(tiny_model_dir):
    predictor = Predictor(str(tiny_model_dir), "torch")
    hidden, logits = block_inputs(predictor.model, predictor.processor, _images(6, seed=4))
    lab = hidden[:4].repeat(10, 1, 1)  # 40 cells: more than a batch, so the seeds' batch orders differ
    args = (predictor.model, 3, lab, np.tile([0, 1, 2, 0], 10), hidden[4:], logits[4:])
    singles = [tune(*args, seed=s, config=TuningConfig(epochs=1)).state_dict() for s in (5, 1005)]  # the seeds a soup of two uses
    soup = tune(*args, seed=5, config=TuningConfig(epochs=1, soup=2)).state_dict()
    name = "head.weight"
    assert torch.allclose(soup[name], (singles[0][name] + singles[1][name]) / 2, atol=1e-6)
    assert not torch.allclose(singles[0][name], singles[1][name])  # two different fine-tunings were averaged


def test_lora_updates_are_merged_into_plain_layers(tiny_model_dir):
    import bmc.lab.tuning as lt

    predictor = Predictor(str(tiny_model_dir), "torch")
    hidden, logits = block_inputs(predictor.model, predictor.processor, _images(6, seed=5))
    tail = Tail(predictor.model, 3)
    before = tail.logits(hidden)
    updates = lt._add_lora(tail, 2)
    assert updates and all(p.requires_grad for p in updates)
    assert not any(p.requires_grad for name, p in tail.blocks.named_parameters() if "lora_" not in name)  # the weights stay frozen
    with torch.no_grad():
        for p in updates:
            p.normal_(std=0.5)  # LoRA's B starts at zero: give the update a value to merge
    with_updates = tail.logits(hidden)
    assert not np.allclose(with_updates, before, atol=1e-3)
    lt._merge_lora(tail)
    assert not any(type(m).__module__.startswith("peft") for m in tail.blocks.modules())  # no peft layer left
    assert np.allclose(tail.logits(hidden), with_updates, atol=1e-3)

    tuned = tune(predictor.model, 3, hidden[:4], np.array([0, 1, 2, 0]), hidden[4:], logits[4:], config=TuningConfig(epochs=2, lora_rank=2))
    assert "lora" not in " ".join(tuned.state_dict())
    assert not np.allclose(tuned.logits(hidden), before, atol=1e-3)  # it learnt through the low-rank updates
