"""Documentation that is generated from the code stays in step with it."""

from pathlib import Path

from helpers import ROOT

from bmc.train.arguments import OPTIONS_END, OPTIONS_START, options_markdown


def test_training_doc_lists_every_option_as_the_code_defines_it():
    doc = (ROOT / "docs" / "training.md").read_text()
    listed = doc.split(OPTIONS_START, 1)[1].split(OPTIONS_END, 1)[0].strip()
    assert listed == options_markdown().strip(), "docs/training.md is out of date: run python -m bmc.train.arguments docs/training.md"
    for name in ("--denoise", "--focal_gamma", "--review_target_accuracy", "--fp16_weights", "--code_url", "--distill_from"):
        assert f"`{name}`" in listed


def test_the_readme_is_a_front_page_whose_figures_are_the_bundled_models():
    import json

    from bmc.constants import DEFAULT_MODEL
    from bmc.train.front_page import TABLE_END, TABLE_START, results_table

    readme = (ROOT / "README.md").read_text()
    body = readme.split("\n---\n", 1)[1]  # after the Space header
    assert len(body.strip().splitlines()) <= 120
    table = readme.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    metrics = json.loads((Path(DEFAULT_MODEL) / "metrics.json").read_text())
    assert table == results_table(metrics), "README.md's results table is out of date: python -m bmc.train.front_page README.md"
    assert "issue" not in body.lower() and "✗" not in body  # goals and missed targets live in docs/
