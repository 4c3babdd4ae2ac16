"""Predictor and attribution maps on a tiny random model (fast unit tests)."""

import numpy as np
import pytest
import torch
from PIL import Image

from bmc.model import UnsafeModelError, load_classifier
from bmc.serve.explain import DEFAULT_METHOD, METHODS, Explainer, blurred, default_method, empty_slide, overlay
from bmc.serve.faithfulness import centre_vs_border
from bmc.serve.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Predictor(str(tiny_model_dir))


@pytest.fixture
def cell():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8))


def test_predictions_are_probabilities_with_flags(predictor, cell):
    preds = predictor.predict([cell, cell.rotate(90)])
    assert len(preds) == 2
    for p in preds:
        assert set(p.probs) == {"BLA", "LYT", "NGS"}
        assert sum(p.probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.flagged == (p.confidence < predictor.threshold)
        assert p.top_k(2)[0] == (p.top_code, p.confidence)
    assert predictor.version.startswith("sha256:")


def test_batched_and_single_predictions_agree(predictor, cell):
    other = cell.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    together = predictor.predict([cell, other])
    alone = predictor.predict([other])
    assert together[1].probs == pytest.approx(alone[0].probs, abs=1e-5)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_gives_a_normalised_map_at_image_size(tiny_model_dir, cell, method):
    model, processor = load_classifier(str(tiny_model_dir))
    attribution = Explainer(model, processor).explain(cell, method, target=1)
    assert attribution.heatmap.shape == (80, 90)
    assert attribution.heatmap.min() >= 0 and attribution.heatmap.max() == pytest.approx(1.0)
    assert attribution.target == 1 and attribution.how_to_read
    assert overlay(cell, attribution.heatmap, 0.4).size == cell.size


def test_every_map_comes_with_its_evidence(tiny_model_dir, cell):
    model, processor = load_classifier(str(tiny_model_dir))
    explainer = Explainer(model, processor)
    attribution = explainer.explain(cell, DEFAULT_METHOD, target=2)
    evidence = explainer.evidence(cell, attribution)
    assert 0 <= evidence.p_removed <= 1 and 0 <= evidence.p_random <= 1
    assert evidence.curve[0] == pytest.approx(evidence.p_full, abs=1e-5)  # the curve starts at the intact image
    assert "lowers P(NGS) from" in evidence.line("NGS")


def test_the_default_is_a_transformer_method_with_a_fallback(tiny_model_dir):
    model, processor = load_classifier(str(tiny_model_dir))
    explainer = Explainer(model, processor)
    assert default_method(explainer) == DEFAULT_METHOD and METHODS[DEFAULT_METHOD].vit_only
    explainer.methods = lambda: ("Grad-CAM", "Occlusion")  # what a ConvNeXt offers
    assert default_method(explainer) == "Grad-CAM"


def test_integrated_gradients_starts_from_a_blurred_cell_not_a_flat_colour(tiny_model_dir, cell):
    model, processor = load_classifier(str(tiny_model_dir))
    x = Explainer(model, processor).pixels(cell)
    start = blurred(x)
    assert start.shape == x.shape and 0 < start.std() < x.std()  # detail gone, colour variation kept


def test_an_empty_slide_start_gives_plain_background_no_attribution(tiny_model_dir):
    model, processor = load_classifier(str(tiny_model_dir))
    rgb = np.full((64, 64, 3), (230, 200, 210), np.uint8)
    rgb[24:40, 24:40] = (90, 40, 120)  # a dark "cell" on a plain slide
    explainer = Explainer(model, processor)
    x = explainer.pixels(Image.fromarray(rgb))
    start = empty_slide(x)
    assert torch.allclose(start, x[..., :1, :1].expand_as(x))  # the border's colour everywhere
    target = int(explainer._logits(x).argmax())
    heat = explainer.integrated_gradients(x, target, baseline="slide")
    side = heat.shape[0]
    corner, middle = np.abs(heat[: side // 8, : side // 8]).mean(), np.abs(heat[side // 3 : -side // 3, side // 3 : -side // 3]).mean()
    assert corner < 0.05 * middle  # the slide differs from its start by nothing: (almost) no attribution there
    with pytest.raises(ValueError, match="slide"):
        explainer.integrated_gradients(x, target, baseline="black")


def test_noise_tunnel_option_runs(tiny_model_dir, cell):
    model, processor = load_classifier(str(tiny_model_dir))
    assert Explainer(model, processor).explain(cell, "Integrated Gradients", noise_tunnel=True).heatmap.shape == (80, 90)


def test_unknown_method_is_named(tiny_model_dir, cell):
    model, processor = load_classifier(str(tiny_model_dir))
    with pytest.raises(ValueError, match="unknown attribution method 'LIME'"):
        Explainer(model, processor).explain(cell, "LIME")


def test_centre_vs_border():
    heat = np.zeros((100, 100))
    heat[40:60, 40:60] = 1
    centre, border = centre_vs_border(heat)
    assert centre > 0 and border == 0


def test_pickle_only_model_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(UnsafeModelError, match="safetensors only"):
        load_classifier(str(tmp_path))


def _pickle_folder(src, dst, state):
    """A copy of a model folder whose weights are a pytorch_model.bin holding ``state``."""
    import shutil

    import torch

    shutil.copytree(src, dst)
    (dst / "model.safetensors").unlink()
    torch.save(state, dst / "pytorch_model.bin")
    return dst


def test_pickle_weights_load_only_with_the_flag_and_only_tensors(tiny_model_dir, tmp_path, cell):
    import os

    reference = Predictor(str(tiny_model_dir), "torch")
    folder = _pickle_folder(tiny_model_dir, tmp_path / "bin", reference.model.state_dict())
    with pytest.raises(UnsafeModelError, match="--allow-pickle-weights"):
        Predictor(str(folder))
    allowed = Predictor(str(folder), "torch", allow_pickle=True)
    assert allowed.predict([cell])[0].probs == pytest.approx(reference.predict([cell])[0].probs, abs=1e-6)

    class Payload:  # what a malicious checkpoint does: run a command while being unpickled
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = _pickle_folder(tiny_model_dir, tmp_path / "evil", {"classifier.weight": Payload()})
    with pytest.raises(UnsafeModelError, match="objects other than tensors"):
        Predictor(str(evil), "torch", allow_pickle=True)
    assert not (tmp_path / "pwned").exists()


def test_no_code_path_trusts_remote_code():
    from helpers import ROOT

    sources = [*ROOT.joinpath("bmc").rglob("*.py"), ROOT / "app.py", ROOT / "train_hf.py"]
    offenders = [str(p) for p in sources if "trust_remote_code=True" in p.read_text()]
    assert not offenders


def test_the_registry_says_which_maps_ignore_the_class(tiny_model_dir, cell):
    model, processor = load_classifier(str(tiny_model_dir))
    explainer = Explainer(model, processor)
    assert explainer.methods() == tuple(METHODS)  # a ViT offers every method, in the registry's order
    for name, method in METHODS.items():
        maps = [explainer.explain(cell, name, target=t).heatmap for t in (0, 2)]
        assert np.allclose(maps[0], maps[1]) == method.class_independent, name


def test_an_empty_map_says_so_instead_of_showing_nothing(tiny_model_dir, cell, monkeypatch):
    import dataclasses

    from bmc.serve import explain

    empty = dataclasses.replace(explain.METHODS["Grad-CAM"], attribute=lambda *args, **kwargs: np.zeros((4, 4), np.float32))
    monkeypatch.setitem(explain.METHODS, "Grad-CAM", empty)
    model, processor = load_classifier(str(tiny_model_dir))
    attribution = Explainer(model, processor).explain(cell, "Grad-CAM")
    assert attribution.heatmap.max() == 0 and attribution.how_to_read == explain.NO_EVIDENCE


def test_conservative_lrp_leaves_the_model_as_it_was_and_conserves_relevance(tiny_model_dir, cell):
    import torch

    from bmc.serve import vit_maps

    model, processor = load_classifier(str(tiny_model_dir))
    x = Explainer(model, processor).pixels(cell)
    with torch.no_grad():
        before = model(pixel_values=x).logits
    implementation = model.config._attn_implementation
    tokens = vit_maps.lrp_relevance(model, x, target=1)
    with torch.no_grad():
        after = model(pixel_values=x).logits
    assert torch.equal(before, after) and model.config._attn_implementation == implementation
    # LayerNorm's scale, the attention weights and the gates held fixed: the logit is linear in the first block's
    # tokens up to the biases, so the relevance cannot be a map that changes nothing when the class changes
    other = vit_maps.lrp_relevance(model, x, target=2)
    assert tokens.shape == other.shape and not np.allclose(tokens, other)
    with vit_maps.conservative_propagation(model), torch.no_grad():
        held = model(pixel_values=x).logits
    assert torch.allclose(held, before, atol=1e-4)  # the same forward pass: only the backward pass changes


def test_the_slide_reference_takes_what_an_empty_slide_gets_off_the_rollout(tiny_model_dir, cell):
    model, processor = load_classifier(str(tiny_model_dir))
    explainer = Explainer(model, processor)
    x = explainer.pixels(cell)
    plain = explainer.gradient_rollout(x, 0, slide_reference=False)
    referenced = explainer.gradient_rollout(x, 0)  # the default
    reference = explainer.gradient_rollout(empty_slide(x), 0, slide_reference=False)  # four passes, which one stands for
    assert referenced.shape == plain.shape
    np.testing.assert_allclose(plain - referenced, reference, atol=1e-6)
    # an empty slide itself shows no evidence against itself
    blank = empty_slide(x)
    assert np.abs(explainer.gradient_rollout(blank, 0, slide_reference=True)).max() < 1e-5


def test_first_order_occlusion_is_occlusion_for_a_model_linear_in_its_pixels(tiny_model_dir, cell):
    """For a logit linear in the pixels the first-order estimate is exact: it must match Occlusion's measured drops
    (up to the light noise Occlusion's fill adds)."""
    model, processor = load_classifier(str(tiny_model_dir))
    explainer = Explainer(model, processor)
    x = explainer.pixels(cell)
    weights = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(1))
    explainer._logits = lambda pixels: torch.stack([(pixels * weights).sum((1, 2, 3)), torch.zeros(len(pixels))], 1)
    fast = explainer.raw_map(x, "Occlusion", 0, first_order=True)
    measured = explainer.occlusion(x, 0)  # clipped at zero: compare where a removal lowers the logit
    assert fast.shape == measured.shape
    lowered = measured > 0
    np.testing.assert_allclose(fast[lowered], measured[lowered], rtol=0.2, atol=0.05 * measured.max())
    assert np.corrcoef(np.clip(fast, 0, None).ravel(), measured.ravel())[0, 1] > 0.95
