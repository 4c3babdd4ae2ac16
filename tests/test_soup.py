"""``bmc soup``: the weight average of two runs, and the members it must refuse."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bmc.train.soup import SoupError, greedy_members, write_soup


def _member(tiny_model_dir: Path, tmp_path: Path, name: str, shift: float) -> Path:
    """A copy of the tiny model with every float tensor shifted by ``shift``, plus the files a trained folder has."""
    folder = tmp_path / name
    shutil.copytree(tiny_model_dir, folder)
    state = {k: (v + shift if v.is_floating_point() else v) for k, v in load_file(str(folder / "model.safetensors")).items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "split_manifest.csv").write_text("source,label,split\na.jpg,BLA,train\nb.jpg,LYT,validation\n")
    metrics = {"model_name": name, "base_model_source": "tiny", "validation": {"macro_f1": 0.5}, "test": {}}
    metrics["calibration"] = {"target_accuracy": 0.9}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_the_soup_is_the_weighted_average_and_forgets_the_members_figures(tiny_model_dir, tmp_path):
    a = _member(tiny_model_dir, tmp_path, "a", 0.0)
    b = _member(tiny_model_dir, tmp_path, "b", 1.0)
    (a / "training_curves.png").write_bytes(b"curves of a")
    out = write_soup([a, b], [0.75, 0.25], tmp_path / "soup")
    assert (out / "training_curves.png").read_bytes() == b"curves of a"  # the first member's, as the card says
    first, soup = load_file(str(a / "model.safetensors")), load_file(str(out / "model.safetensors"))
    for key, tensor in first.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(soup[key], tensor + 0.25, atol=1e-5, rtol=0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["soup"] == {"members": [str(a), str(b)], "weights": [0.75, 0.25]}
    assert "validation" not in metrics and "test" not in metrics  # measured afresh by bmc soup, never inherited
    assert metrics["calibration"] == {"target_accuracy": 0.9}
    assert "0.75 × a, 0.25 × b" in metrics["base_model_source"]
    assert (out / "split_manifest.csv").read_text() == (a / "split_manifest.csv").read_text()


def test_members_of_another_split_or_bad_weights_are_refused_by_name(tiny_model_dir, tmp_path):
    a = _member(tiny_model_dir, tmp_path, "a", 0.0)
    b = _member(tiny_model_dir, tmp_path, "b", 1.0)
    with pytest.raises(SoupError, match="one non-negative weight per model, summing to 1"):
        write_soup([a, b], [0.5, 0.6], tmp_path / "s1")
    with pytest.raises(SoupError, match="at least two"):
        write_soup([a], [1.0], tmp_path / "s2")
    (b / "split_manifest.csv").write_text("source,label,split\na.jpg,BLA,validation\nb.jpg,LYT,train\n")
    with pytest.raises(SoupError, match="split_manifest.csv differs"):
        write_soup([a, b], [0.5, 0.5], tmp_path / "s3")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("the user's file")
    with pytest.raises(SoupError, match="not empty"):
        write_soup([a, a], [0.5, 0.5], tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "the user's file"


def test_the_cli_refuses_a_missing_member_in_one_line(tmp_path, capsys):
    from bmc.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["soup", str(tmp_path / "nope"), str(tmp_path / "nope2"), "--out", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    assert "not found" in capsys.readouterr().err


def test_a_greedy_soup_keeps_a_member_only_if_validation_does_not_fall(tiny_model_dir, tmp_path):
    # members shifted by 0.2, 1.0 and 0.4; "validation" is best when the average shift is near 0.3
    members = [_member(tiny_model_dir, tmp_path, name, shift) for name, shift in (("a", 0.2), ("b", 1.0), ("c", 0.4))]
    reference = load_file(str(tiny_model_dir / "model.safetensors"))
    key = next(k for k, v in reference.items() if v.is_floating_point())
    for folder, recorded in zip(members, (0.9, 0.8, 0.7)):  # tried in this order: a, then b, then c
        metrics = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps(metrics | {"validation": {"macro_f1": recorded}}))

    def score(first, state):
        assert first == members[0]  # measured on the best member's folder (its split and processing)
        return 1.0 - abs(float((state[key] - reference[key]).mean()) - 0.3)

    kept, trials = greedy_members(list(reversed(members)), score)
    assert kept == [members[0], members[2]]  # b (average shift 0.6) lowers the score; c (0.3) raises it
    assert [t["kept"] for t in trials] == [True, False, True]
    assert trials[0]["validation_macro_f1"] == 0.9 and trials[2]["validation_macro_f1"] == 1.0
    out = write_soup(kept, [0.5, 0.5], tmp_path / "greedy", greedy=trials)
    assert json.loads((out / "metrics.json").read_text())["soup"]["greedy"] == trials
