"""bench/review.py: the cells it lists as still wrong are exactly what its curve counts as wrong."""

from types import SimpleNamespace

import numpy as np
from PIL import Image

from bench.review import at_levels, gallery, simulate_adaptive


def test_the_cells_left_wrong_match_the_curve_and_make_a_sheet(tmp_path):
    rng = np.random.default_rng(0)
    n, codes = 60, ["NGS", "EOS", "LYT"]
    truth = rng.integers(0, 3, n)
    embeddings = rng.normal(size=(n, 8)) + 0.7 * np.eye(3)[truth] @ rng.normal(size=(3, 8))  # classes that overlap
    logits = rng.normal(size=(n, 3))  # a model that knows nothing of these cells
    predictor = SimpleNamespace(temperature=1.0, threshold=0.9, validation_flagged=0.1)
    curve, _, _, wrong = simulate_adaptive(logits, embeddings, truth, predictor, codes, None, step=5, wrong_at="20")
    assert wrong and 1 - len(wrong) / n == curve["20"]
    reviewed_by_then = at_levels(n)["20"]
    assert len(wrong) <= n - reviewed_by_then
    assert all(cell["truth"] != cell["label"] for cell in wrong)

    images = [Image.new("RGB", (30, 40), (i, 0, 0)) for i in range(n)]
    sheet = Image.open(gallery(tmp_path / "wrong.png", images, wrong, columns=4, side=32))
    assert sheet.size == (4 * 32, max(1, -(-len(wrong) // 4)) * (32 + 14))
