"""Faithfulness measures (bmc.serve.faithfulness) and the attribution benchmark (bench/attribution.py), on toy inputs."""

import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from bench import attribution as bench
from bmc.serve import faithfulness as F

SIZE = 56  # a 4×4 grid of 14-px patches


def bright_patch_image(patch: int = 5) -> np.ndarray:
    """A C×H×W input that is 0 everywhere except one bright patch (the evidence the toy model reads)."""
    x = np.zeros((3, SIZE, SIZE), np.float32)
    x[:, F.patch_mask([patch], SIZE)] = 3.0
    return x


def toy_logits(patch: int = 5):
    """Class 0's logit is the mean brightness of one patch, class 1's is constant."""
    mask = torch.from_numpy(F.patch_mask([patch], SIZE))

    def logits(x: torch.Tensor) -> torch.Tensor:
        evidence = x[:, :, mask].mean((1, 2)) * 4
        return torch.stack([evidence, torch.ones_like(evidence)], dim=1)

    return logits


def map_on(patch: int) -> np.ndarray:
    heat = np.zeros((SIZE, SIZE), np.float32)
    heat[F.patch_mask([patch], SIZE)] = 1
    return heat


def test_patch_scores_sum_the_map_per_patch():
    scores = F.patch_scores(map_on(6), SIZE)
    assert scores.shape == (4, 4) and scores.argmax() == 6
    assert scores.sum() == pytest.approx(14 * 14) and np.count_nonzero(scores) == 1
    assert F.patch_scores(np.ones((100, 100)), SIZE).std() == pytest.approx(0, abs=1e-3)  # any resolution, resized


def test_impute_fills_from_the_surroundings_and_keeps_the_rest():
    x = bright_patch_image(5)
    removed = F.patch_mask([5], SIZE)
    filled = F.impute(x, removed, rng=None)
    assert np.abs(filled[:, removed]).max() < 0.5  # the bright patch is gone, filled with its dark surroundings
    assert np.array_equal(filled[:, ~removed], x[:, ~removed])
    flat = np.full((3, SIZE, SIZE), 0.7, np.float32)
    assert np.allclose(F.impute(flat, removed, rng=None), 0.7)  # a uniform slide stays uniform
    everything = F.impute(x, np.ones((SIZE, SIZE), bool), rng=None)
    assert np.allclose(everything, x.mean())  # nothing kept: the mean colour
    noisy = F.impute(flat, removed, np.random.default_rng(0))
    assert noisy[:, removed].std() > 0.01 and np.array_equal(noisy[:, ~removed], flat[:, ~removed])


def test_abpc_is_positive_for_the_right_map_and_negative_for_the_reverse():
    x, logits = bright_patch_image(5), toy_logits(5)
    right = F.abpc(*F.deletion_insertion(logits, x, 0, F.patch_scores(map_on(5), SIZE)))
    wrong = F.abpc(*F.deletion_insertion(logits, x, 0, -F.patch_scores(map_on(5), SIZE)))
    elsewhere = F.abpc(*F.deletion_insertion(logits, x, 0, F.patch_scores(map_on(10), SIZE)))
    assert right > 0.5 and wrong < -0.5 and right > elsewhere
    assert F.abpc(np.zeros(3), np.ones(3), (0, 0.5, 1)) == pytest.approx(1.0)


def test_patch_drops_find_the_one_patch_the_model_reads():
    drops = F.patch_drops(toy_logits(5), bright_patch_image(5), 0)
    assert drops.shape == (4, 4) and drops.argmax() == 5
    assert drops.ravel()[5] > 5 * np.abs(np.delete(drops.ravel(), 5)).max()


def test_removal_fill_is_each_patch_filled_as_if_removed_alone():
    rng = np.random.default_rng(0)
    x = np.stack([cv2.GaussianBlur(c, (0, 0), 4) for c in rng.normal(size=(3, SIZE, SIZE)).astype(np.float32)])
    filled = F.removal_fill(x)
    for patch in (0, 5, 15):
        removed = F.patch_mask([patch], SIZE)
        alone = F.impute(x, removed, rng=None, noise=0.0)
        gap = np.abs(alone[:, removed] - x[:, removed]).max()
        assert np.abs(filled[:, removed] - alone[:, removed]).max() < 0.02 * gap


def test_evidence_line_compares_the_map_with_a_random_removal():
    ev = F.evidence(toy_logits(5), bright_patch_image(5), 0, map_on(5), fraction=1 / 16)
    assert ev.p_removed < ev.p_random and ev.p_full > ev.p_removed
    assert len(ev.curve) == len(ev.curve_fractions) and ev.curve[0] == pytest.approx(ev.p_full)
    line = ev.line("PMO")
    assert line.startswith("Removing the 6% of the image this map marks lowers P(PMO) from ")
    assert f"{ev.p_removed:.2f}" in line and f"random 6% lowers it to {ev.p_random:.2f}" in line
    picture = F.curve_image(ev, "PMO")
    assert picture.size == (360, 220) and np.asarray(picture).std() > 0


def test_ranked_breaks_ties_at_random_not_by_position():
    firsts = {int(F.ranked(np.zeros(16), np.random.default_rng(s))[0]) for s in range(20)}
    assert len(firsts) > 5
    assert F.ranked(np.arange(16.0), np.random.default_rng(0))[0] == 15


def test_summary_confidence_intervals_and_targets():
    rng = np.random.default_rng(0)
    records = []
    for i in range(40):
        methods = {
            "good": {"abpc": 0.6 + 0.05 * rng.standard_normal(), "single_patch": 0.5, "rand_head": 0.1, "rand_top_half": 0.05},
            "centre": {"abpc": 0.3 + 0.05 * rng.standard_normal(), "single_patch": 0.1, "rand_head": 1.0, "rand_top_half": 1.0},
            "random": {"abpc": 0.0 + 0.05 * rng.standard_normal(), "single_patch": 0.0, "rand_head": 0.0, "rand_top_half": 0.0},
        }
        for row in methods.values():
            row |= {"mass_cell": 0.9, "mass_nucleus": 0.5, "pointing": 1.0, "mass_stain": 0.4, "seconds": 0.2}
        records.append({"file": f"{i}.png", "true": "LYT" if i % 2 else "NGS", "predicted": "LYT", "methods": methods})
    out = bench.summarise(records, default="good")
    good = out["methods"]["good"]
    assert out["n"] == 40 and good["n"] == 40
    assert good["abpc_ci"][0] < good["abpc"] < good["abpc_ci"][1]
    assert good["abpc_vs_centre_ci"][0] > 0 and out["methods"]["random"]["abpc_vs_centre_ci"][1] < 0
    assert all(out["targets"].values()), out["targets"]
    assert set(out["per_class"]) == {"LYT", "NGS"} and out["per_class"]["LYT"]["n"] == 20


def test_centre_prior_sits_on_the_centre_and_scales_with_the_cell():
    rgb = np.full((100, 100, 3), 220, np.uint8)
    small, large = rgb.copy(), rgb.copy()
    yy, xx = np.mgrid[:100, :100]
    small[(yy - 50) ** 2 + (xx - 50) ** 2 < 10**2] = (90, 40, 160)  # a violet nucleus
    large[(yy - 50) ** 2 + (xx - 50) ** 2 < 30**2] = (90, 40, 160)
    a, b = bench.centre_prior(small, SIZE), bench.centre_prior(large, SIZE)
    assert np.unravel_index(a.argmax(), a.shape) in {(27, 27), (27, 28), (28, 27), (28, 28)}
    assert b.sum() > a.sum()


def test_randomised_copies_change_the_head_then_the_top_blocks(tiny_model_dir):
    from bmc.model import load_classifier

    model, _ = load_classifier(str(tiny_model_dir))
    head, top = bench.randomised(model, False), bench.randomised(model, True)
    assert not torch.equal(head.classifier.weight, model.classifier.weight)
    last = lambda m: m.dinov2.encoder.layer[-1].mlp.fc1.weight  # noqa: E731
    first = lambda m: m.dinov2.encoder.layer[0].mlp.fc1.weight  # noqa: E731
    assert torch.equal(last(head), last(model)) and not torch.equal(last(top), last(model))
    assert torch.equal(first(top), first(model))


def test_the_benchmark_writes_the_issue_json(tiny_model_dir, tmp_path):
    cells, masks = tmp_path / "images", tmp_path / "masks"
    cells.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    (tmp_path / "labels.csv").write_text("image ID,class\n1,2\n2,1\n")
    for stem in ("001", "002"):
        Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(cells / f"{stem}.png")
        mask = np.zeros((60, 60), np.uint8)
        mask[15:45, 15:45], mask[25:35, 25:35] = 128, 255
        Image.fromarray(mask).save(masks / f"{stem}.png")
    out = tmp_path / "a.json"
    bench.main(["--model", str(tiny_model_dir), "--cells", str(cells), "--masks", str(masks), "--n", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["n"] == 2 and {"random", "centre", "Grad-CAM", "Occlusion", result["default"]} <= set(result["methods"])
    for name, d in result["methods"].items():
        assert {"abpc", "abpc_ci", "single_patch_spearman", "randomisation_spearman", "mass_on_cell", "pointing", "seconds"} <= set(d)
        assert set(d["randomisation_spearman"]) >= {"head", "top_half"}
        assert 0 <= d["mass_on_cell"] <= 1 and d["mass_on_nucleus"] <= d["mass_on_cell"] + 1e-6, name
    assert result["methods"]["centre"]["randomisation_spearman"]["top_half"] == pytest.approx(1.0)
    assert set(result["per_class"]) == {"LYT", "NGS"}
    records = result["records"]
    bench.main(["--model", str(tiny_model_dir), "--cells", str(cells), "--masks", str(masks), "--n", "2", "--out", str(out), "--resume"])
    assert json.loads(out.read_text())["records"] == records  # nothing left to measure: the cells measured are kept
    merged = tmp_path / "m.json"
    bench.main(["--merge", str(out), str(out), "--out", str(merged)])
    assert json.loads(merged.read_text())["n"] == 4
    from test_model_card import _metrics

    folder = tmp_path / "model-folder"  # --card: the summary, without per-cell records, beside the measured model
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(_metrics()))
    (tmp_path / "part.json").write_text(json.dumps(json.loads(out.read_text()) | {"model": str(folder)}))
    bench.main(["--merge", str(tmp_path / "part.json"), "--out", str(tmp_path / "c.json"), "--card"])
    card = json.loads((folder / "attribution.json").read_text())
    assert "records" not in card and card["methods"].keys() == result["methods"].keys() and card["n"] == 2
    assert "single-patch Spearman" in (folder / "README.md").read_text()  # the card re-rendered with the table


def test_bad_folder_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--model", str(tmp_path / "none"), "--cells", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert "not a folder" in capsys.readouterr().err


def test_the_model_card_shows_the_faithfulness_table_only_when_measured(tmp_path):
    from test_model_card import _metrics

    from bmc.train.model_card import ATTRIBUTION_FILE, render_card

    (tmp_path / "metrics.json").write_text(json.dumps(_metrics()))
    without = render_card(tmp_path).read_text()
    assert "### Explanations (attribution maps)" in without and "single-patch Spearman" not in without
    rows = {"abpc": 0.412, "abpc_ci": [0.3, 0.5], "single_patch_spearman": 0.25, "randomisation_spearman": {"head": 0.5, "top_half": 0.1}}
    table = {
        "n": 7,
        "cells": "cells",
        "split": "test",
        "methods": {"Grad-CAM": rows | {"seconds": 0.3}, "centre": rows | {"seconds": None}},
    }
    (tmp_path / ATTRIBUTION_FILE).write_text(json.dumps(table))
    text = render_card(tmp_path).read_text()
    assert "| Grad-CAM | 0.412 [0.300, 0.500] | 0.250 | 0.100 | 0.3 |" in text and "On 7 cells of `cells` (test split)" in text


def test_half_patch_shifts_follow_an_edge_inside_a_patch():
    """A square that straddles four 14-px patches: one value per patch spreads it over all four; the average over
    half-patch shifts (7-px detail) puts most of the map on the square itself."""
    from bmc.serve.vit_maps import shifted

    x = torch.zeros(1, 3, 56, 56)
    x[..., 21:35, 21:35] = 1.0

    def patch_mean(pixels: torch.Tensor) -> np.ndarray:  # a stand-in for a model's one-value-per-patch map
        return pixels[0, 0].reshape(4, 14, 4, 14).mean(axis=(1, 3)).numpy()

    inside = np.zeros((56, 56), bool)
    inside[21:35, 21:35] = True

    def mass_inside(grid: np.ndarray) -> float:
        heat = np.kron(grid, np.ones((56 // grid.shape[0],) * 2))
        return float(heat[inside].sum() / heat.sum())

    plain, fine = patch_mean(x), shifted(patch_mean, x, 14)
    assert fine.shape == (8, 8)
    assert mass_inside(plain) == pytest.approx(0.25)
    assert mass_inside(fine) > 0.5
    assert np.unravel_index(fine.argmax(), fine.shape) in {(3, 3), (3, 4), (4, 3), (4, 4)}


def test_the_grid_limit_is_what_a_perfect_patch_map_reaches(tmp_path):
    """A cell whose edges fall on the patch edges loses less to the grid than one cut in the middle of its patches,
    and the finer grid loses less than the coarse one."""
    masks = tmp_path / "masks"
    masks.mkdir()
    aligned = np.zeros((168, 168), np.uint8)
    aligned[42:126, 42:126] = 255
    Image.fromarray(aligned).save(masks / "cell.png")
    on_edges = bench.grid_limit(masks, 168)
    cut = np.zeros((168, 168), np.uint8)
    cut[49:119, 49:119] = 128
    Image.fromarray(cut).save(masks / "cell.png")
    inside = bench.grid_limit(masks, 168)
    assert on_edges["n"] == inside["n"] == 1
    assert on_edges["14px"] > inside["14px"] and inside["7px"] > inside["14px"]
    assert 0.5 < inside["14px"] < 1 and 0.5 < on_edges["7px"] < 1


def test_method_variants_parse_to_registry_options():
    assert bench.method_options("Occlusion@first-order,8") == ("Occlusion", {"first_order": True, "samples": 8})
    assert bench.method_options("Occlusion@first-order,rank")[1] == {"first_order": True, "weighted": "rank"}
    assert bench.is_slow("Occlusion") and not bench.is_slow("Occlusion@first-order")
    assert bench.method_options("Grad-CAM@-6") == ("Grad-CAM", {"layer": -6})
    assert bench.method_options("Integrated Gradients@slide") == ("Integrated Gradients", {"baseline": "slide"})
    assert bench.method_options("Integrated Gradients@slide,8") == (
        "Integrated Gradients",
        {"baseline": "slide", "n_steps": 8, "internal_batch_size": 8},
    )
    with pytest.raises(SystemExit, match="unknown variant"):
        bench.method_options("Integrated Gradients@black")
    old_default = bench.method_options("Gradient-weighted rollout@no-slide-reference")[1]
    assert old_default == {"half_patch": True, "skip_sinks": False, "contrast": False, "slide_reference": False}


def test_value_norm_weighting_scales_each_heads_columns_by_what_the_token_passes_on(tiny_model_dir) -> None:
    from bmc.model import load_classifier
    from bmc.serve.explain import Explainer
    from bmc.serve.vit_maps import head_output_norms

    values = torch.zeros(3, 4)  # 3 tokens, 2 heads of size 2
    values[0] = torch.tensor([1.0, 0.0, 0.0, 2.0])
    values[1] = torch.tensor([3.0, 4.0, 0.0, 2.0])
    values[2] = torch.tensor([0.0, 1.0, 0.0, 2.0])
    norms = head_output_norms(values, None, heads=2)
    assert torch.allclose(norms[0], torch.tensor([1.0, 5.0, 1.0]) / (7 / 3))  # head 0: ‖v‖ over its mean
    assert torch.allclose(norms[1], torch.ones(3))  # every token passes the same on through head 1
    identity = torch.eye(4)  # an output projection that changes nothing gives the same norms
    assert torch.allclose(head_output_norms(values, identity, heads=2), norms)
    model, processor = load_classifier(str(tiny_model_dir))
    ex = Explainer(model, processor)
    x = torch.randn(1, 3, 56, 56)
    plain, weighted = ex.gradient_rollout(x, 0), ex.gradient_rollout(x, 0, value_norms=True)
    assert plain.shape == weighted.shape and not np.allclose(plain, weighted)
    assert bench.method_options("Gradient-weighted rollout@value-norms,slide-reference")[1]["value_norms"] is True
