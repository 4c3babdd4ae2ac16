"""Documentation that is generated from the code stays in step with it."""

from helpers import ROOT

from bmc.train.arguments import OPTIONS_END, OPTIONS_START, options_markdown


def test_training_doc_lists_every_option_as_the_code_defines_it():
    doc = (ROOT / "docs" / "training.md").read_text()
    listed = doc.split(OPTIONS_START, 1)[1].split(OPTIONS_END, 1)[0].strip()
    assert listed == options_markdown().strip(), "docs/training.md is out of date: run python -m bmc.train.arguments docs/training.md"
    for name in ("--denoise", "--focal_gamma", "--review_target_accuracy", "--fp16_weights", "--code_url", "--distill_from"):
        assert f"`{name}`" in listed
