"""The model's own single-cell check: fitted, stored beside the weights, tied to them, and on real cells."""

import numpy as np
import pytest
from PIL import Image

from bmc.serve.guard import GUARD_FILE, LearntGuard, load_guard
from bmc.serve.predictor import Predictor, model_version
from bmc.train.guard import fit_guard, tiles


def _write_cells(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"cell_{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_sheets_hold_two_to_nine_cells_in_a_grid(tmp_path):
    paths = _write_cells(tmp_path, 5)
    from bmc.train.guard import TILE_SIDES

    for sheet in tiles(paths, 20, np.random.default_rng(0)):
        w, h = sheet.size
        grids = [(w // side, h // side) for side in TILE_SIDES if w % side == 0 and h % side == 0]
        assert any(2 <= cols * rows <= 9 and cols >= rows for cols, rows in grids), sheet.size  # 2x1 up to 3x3


def test_the_check_is_stored_beside_the_weights_and_tied_to_them(tiny_model_dir, tmp_path):
    d = 8
    guard = LearntGuard(np.zeros(d), np.ones(d), np.r_[1.0, np.zeros(d - 1)], 0.0, "sha256:abc")
    assert np.allclose(guard.several(np.array([[0.0] * d, [10.0] + [0.0] * (d - 1)])), [0.5, 1 / (1 + np.exp(-10))])
    guard.save(tmp_path, {"held_out_sheets_caught": 0.9})
    back = load_guard(tmp_path, "sha256:abc")
    assert back is not None and np.allclose(back.coef, guard.coef) and back.threshold == guard.threshold
    assert load_guard(tmp_path, "sha256:other") is None  # other weights: the check does not apply
    assert load_guard(tmp_path / "none", "sha256:abc") is None

    before = Predictor(str(tiny_model_dir), "torch").version
    LearntGuard(np.zeros(d), np.ones(d), np.zeros(d), 0.0, before).save(tiny_model_dir, {})
    try:
        assert model_version(str(tiny_model_dir), None) == before  # the stored check is not part of the weights
        assert Predictor(str(tiny_model_dir), "torch").guard is not None  # ... and is loaded with them
    finally:
        (tiny_model_dir / GUARD_FILE).unlink()


def test_fitting_the_check_measures_it_on_held_out_cells(tiny_model_dir, tmp_path, monkeypatch):
    import bmc.train.guard as cg

    monkeypatch.setattr(cg, "FIT_IMAGES", 12)
    train = _write_cells(tmp_path / "train", 12, seed=1)
    held = _write_cells(tmp_path / "held", 8, seed=2)
    predictor = Predictor(str(tiny_model_dir), "torch")
    guard, figures = fit_guard(predictor, train, held)
    assert guard.version == predictor.version and guard.coef.shape == guard.mean.shape
    assert figures["held_out_single_cells"] == 8 and 0.0 <= figures["held_out_single_cells_refused"] <= 1.0
    assert figures["held_out_sheets"] == 2 and 0.0 <= figures["held_out_sheets_caught"] <= 1.0


@pytest.mark.integration
def test_the_bundled_check_catches_sheets_of_unseen_marrow_cells_and_passes_them_one_by_one(shared_data):
    from helpers import BUNDLED

    from bmc.splits import read_resolved_manifest

    predictor = Predictor(str(BUNDLED))
    assert predictor.guard is not None, "run bmc guard on the bundled model"
    test = [r["source"] for r in read_resolved_manifest(BUNDLED / "split_manifest.csv") if r["split"] == "test"]
    rng = np.random.default_rng(7)
    singles = [Image.open(test[i]).convert("RGB") for i in rng.choice(len(test), 40, replace=False)]
    sheets = tiles(test, 10, rng)
    assert predictor.guard.refuses(predictor.forward(singles)[1]).sum() <= 1  # goal: at most 1 % of real cells refused
    assert predictor.guard.refuses(predictor.forward(sheets)[1]).sum() >= 8
