"""train_hf.py end to end on ~60 real images with a tiny model (minutes → seconds), then pipeline()."""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import PBC, matek_images

import train_hf
from bmc.calibration import softmax
from bmc.data import from_records
from bmc.metrics import classification_metrics
from bmc.model import load_classifier
from bmc.model_folder import MODEL_FOLDER_FILES, read_manifest
from bmc.serve.predictor import dataset_logits
from bmc.train.trainer import cell_loss, load_checkpoint_weights, sample_weights

CLASSES = ("BLA", "NGS", "EOS", "LYT")  # canonical (haematological) order


@pytest.fixture(scope="module")
def small_kaggle_folder(tmp_path_factory, shared_data):
    """60 real images in the Kaggle layout, as symlinks (the images themselves stay in ../shared)."""
    root = tmp_path_factory.mktemp("cells") / "bone_marrow_cell_dataset"
    for code in CLASSES:
        for src in matek_images(code, 15):
            dst = root / code / "0001-1000" / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst)
    return root.parent


def _args(folder, out, model, *extra):
    return [
        "--train_dir",
        str(folder),
        "--output_dir",
        str(out),
        "--model_name_or_path",
        str(model),
        "--ignore_mismatched_sizes",
        "--image_size",
        "56",
        "--split_mode",
        "random",
        "--per_device_train_batch_size",
        "16",
        "--per_device_eval_batch_size",
        "32",
        "--eval_strategy",
        "epoch",
        "--save_strategy",
        "epoch",
        "--load_best_model_at_end",
        "--report_to",
        "none",
        "--learning_rate",
        "1e-3",
        "--seed",
        "7",
        "--dataloader_num_workers",
        "0",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_kaggle_folder, tiny_model_dir):
    out = tmp_path_factory.mktemp("run")
    code = train_hf.main(
        _args(
            small_kaggle_folder,
            out,
            tiny_model_dir,
            "--num_train_epochs",
            "2",
            "--loss",
            "focal",
            "--external_dir",
            str(PBC),
            "--colour_standardise",
            "anchored",
        )
    )
    assert code == 0
    return out


def test_run_writes_a_complete_hub_model_folder(trained):
    for name in (
        *MODEL_FOLDER_FILES,
        "skipped_files.csv",
    ):
        assert (trained / name).is_file(), name
    assert not list(trained.glob("*.bin"))
    config = json.loads((trained / "config.json").read_text())
    assert config["id2label"] == {str(i): c for i, c in enumerate(CLASSES)}
    assert config["dtype"] == "float32" and 0.05 <= config["bmc_temperature"] <= 20
    card = (trained / "README.md").read_text()
    assert "Research use only" in card and "not for diagnosis" in card
    assert "More information needed" not in card
    assert "https://doi.org/10.7937/TCIA.AXH3-T579" in card
    metrics = json.loads((trained / "metrics.json").read_text())
    assert f"{metrics['test']['macro_f1']:.3f}" in card
    assert metrics["external"]["pbc-external"]["n_images"] == 300  # EOS, LYT, NGS (SNE_) images of PBC
    assert (trained / "confusion_matrix_pbc-external.png").is_file() and "confusion_matrix_pbc-external.png" in card
    assert metrics["split_sizes"] == {"train": 44, "validation": 8, "test": 8}
    by_epoch = metrics["validation_macro_f1_by_epoch"]
    assert len(by_epoch) == round(metrics["epochs_trained"]) and all(0 <= f <= 1 for f in by_epoch)
    from bmc.train.evaluation import VALIDATION_PREDICTIONS, read_predictions

    predictions = read_predictions(trained / VALIDATION_PREDICTIONS)  # one row per validation image, as the totals count them
    assert len(predictions) == 8 and all(label in CLASSES and predicted in CLASSES for label, predicted in predictions.values())
    right = sum(label == predicted for label, predicted in predictions.values())
    assert right == sum(metrics["validation"]["confusion_matrix"][i][i] for i in range(len(CLASSES)))


def test_pipeline_loads_the_result_offline(trained, shared_data):
    from transformers import pipeline

    from bmc.transforms import CanonicalColourProcessor, colour_reference

    classify = pipeline("image-classification", model=str(trained))
    assert classify.model.dtype == torch.float32
    out = classify(str(matek_images("LYT", 1)[0]), top_k=4)
    assert {o["label"] for o in out} == set(CLASSES)
    assert sum(o["score"] for o in out) == pytest.approx(1.0, abs=1e-4)
    # --colour_standardise: the reference lies in preprocessor_config.json, and bmc's processor applies it in pipeline()
    processor = CanonicalColourProcessor.from_pretrained(str(trained))
    dark, bright = colour_reference(processor)
    assert dark[0] < 90 < 170 < bright[0]  # the marrow training images' chromatin and slide lightness (Lab)
    canonical = pipeline("image-classification", model=str(trained), image_processor=processor)
    assert {o["label"] for o in canonical(str(matek_images("LYT", 1)[0]), top_k=4)} == set(CLASSES)


def test_metrics_json_matches_a_fresh_evaluation_of_the_saved_model(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    rows = [r for r in read_manifest(trained / "split_manifest.csv") if r["split"] == "test"]
    ds = from_records([(r["source"], r["label"]) for r in rows], metrics["classes"])
    model, processor = load_classifier(str(trained))
    logits, labels = dataset_logits(model, processor, ds)
    fresh = classification_metrics(softmax(logits, model.config.bmc_temperature), labels, len(metrics["classes"]))
    assert fresh["macro_f1"] == pytest.approx(metrics["test"]["macro_f1"], abs=1e-6)
    assert fresh["confusion_matrix"] == metrics["test"]["confusion_matrix"]


def test_resume_from_checkpoint_restores_every_weight(trained, small_kaggle_folder, tiny_model_dir, tmp_path):
    checkpoint = sorted(trained.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[0]
    model, _ = load_classifier(str(tiny_model_dir))
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    stored = load_file(str(checkpoint / "model.safetensors"))  # the raw tensors, under the checkpoint's own names
    target = AutoModelForImageClassification.from_pretrained(str(trained), use_safetensors=True)  # the final weights

    def holds(state: dict, tensor: torch.Tensor) -> bool:
        return any(p.shape == tensor.shape and torch.equal(p, tensor.to(p.dtype)) for p in state.values())

    assert not all(holds(target.state_dict(), t) for t in stored.values())  # the final model differs from checkpoint 1
    load_checkpoint_weights(target, str(checkpoint))
    loaded = target.state_dict()
    missing = [name for name, t in stored.items() if not holds(loaded, t)]
    assert not missing, f"checkpoint tensors not restored (silently skipped?): {missing[:5]}"
    # and a real resume continues to the end
    out = tmp_path / "resumed"
    import shutil

    shutil.copytree(checkpoint, out / checkpoint.name)
    assert (
        train_hf.main(
            _args(
                small_kaggle_folder, out, tiny_model_dir, "--num_train_epochs", "2", "--resume_from_checkpoint", str(out / checkpoint.name)
            )
        )
        == 0
    )
    assert (out / "model.safetensors").is_file()


KILL_AT_STEP_4 = """
import os, signal, sys
from transformers import TrainerCallback
import bmc.train.trainer

class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 4:  # checkpoint-4 is complete; epoch 2 (steps 4-6) is under way
            os.kill(os.getpid(), signal.SIGKILL)

init = bmc.train.trainer.CellTrainer.__init__
def patched(self, *a, **k):
    init(self, *a, **k)
    self.add_callback(KillAfterSave())
bmc.train.trainer.CellTrainer.__init__ = patched
import train_hf
sys.exit(train_hf.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_where_an_uninterrupted_run_ends(small_kaggle_folder, tiny_model_dir, tmp_path):
    import subprocess
    import sys

    from helpers import ROOT

    steps = [
        "--num_train_epochs",
        "3",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--drop_path_rate",
        "0.1",
    ]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert train_hf.main(_args(small_kaggle_folder, whole, tiny_model_dir, *steps)) == 0

    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP_4, *_args(small_kaggle_folder, killed, tiny_model_dir, *steps)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]  # really killed, mid-run
    assert not (killed / "model.safetensors").exists() and not (killed / "config.json").exists()
    assert (killed / "checkpoint-4" / "trainer_state.json").is_file()

    assert train_hf.main(_args(small_kaggle_folder, killed, tiny_model_dir, *steps, "--resume_from_checkpoint", "True")) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, killed))
    assert a["epochs_trained"] == b["epochs_trained"] and a["best_checkpoint"].endswith(Path(b["best_checkpoint"]).name)
    for key in ("accuracy", "macro_f1", "ece", "confusion_matrix"):
        assert a["test"][key] == b["test"][key], key
    assert a["calibration"] == b["calibration"]
    from safetensors.torch import load_file

    wa, wb = load_file(whole / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_needs_a_complete_checkpoint(tmp_path):
    from bmc.train.run import resolve_checkpoint

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-10").mkdir()  # killed while saving: no trainer_state.json
    assert resolve_checkpoint("True", str(tmp_path)) == str(tmp_path / "checkpoint-2")
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_checkpoint(str(tmp_path / "checkpoint-10"), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_checkpoint(True, str(tmp_path / "elsewhere"))
    assert resolve_checkpoint(None, str(tmp_path)) is None


@pytest.mark.parametrize(
    "err,expect",
    [
        (
            OSError(28, "No space left on device", "/data/run/model.safetensors"),
            "the disk is full while writing /data/run/model.safetensors",
        ),
        (OSError(13, "Permission denied", "/srv/models"), "no permission to write /srv/models"),
        (
            RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: file write failed"),
            "the disk is full",
        ),
    ],
)
def test_disk_full_and_permission_errors_get_a_plain_message(monkeypatch, tmp_path, caplog, err, expect):
    def fail(*args):
        raise err

    monkeypatch.setattr(train_hf, "run", fail)
    assert train_hf.main(["--train_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--report_to", "none"]) == 2
    assert expect in caplog.text and "Traceback" not in caplog.text


def test_export_swaps_a_whole_folder_and_keeps_checkpoints(tmp_path):
    from bmc.train.folder import replace_dir_contents

    target = tmp_path / "model"
    target.mkdir()
    (target / "model.safetensors").write_text("old")
    (target / "stale.png").write_text("old")
    import tempfile

    staging = Path(tempfile.mkdtemp(dir=tmp_path))  # private (0700), as run() makes it
    (staging / "model.safetensors").write_text("new")
    (staging / "config.json").write_text("{}")
    (staging / "config.json").chmod(0o600)
    replace_dir_contents(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]  # nothing stale survives
    assert not staging.exists() and not list(tmp_path.glob(".model.old-*"))
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # as readable as any folder the user makes
    assert (target / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask

    (target / "checkpoint-3").mkdir()  # export_dir = output_dir: checkpoints stay
    staging.mkdir()
    (staging / "config.json").write_text('{"new": 1}')
    replace_dir_contents(staging, target)
    assert (target / "checkpoint-3").is_dir() and (target / "config.json").read_text() == '{"new": 1}'


def test_json_config_then_overrides_parse_like_the_file_alone(tmp_path):
    from helpers import ROOT

    parser = train_hf.make_parser()
    config = str(ROOT / "configs" / "bmc-dinov2s-matek-pbc13-stage5-half.json")
    alone = parser.parse_json_file(config)
    parsed = parser.parse_args_into_dataclasses(train_hf.config_as_arguments(config))
    assert [vars(x) for x in parsed[:4]] == [vars(x) for x in alone[:4]]
    assert parsed[4].to_dict() == alone[4].to_dict()
    assert parsed[0].train_dir == ["../shared/data/bone-marrow-cells", "../shared/data/pbc-train"]
    overridden = parser.parse_args_into_dataclasses(
        train_hf.config_as_arguments(config) + ["--resume_from_checkpoint", "True", "--image_size", "56"]
    )
    assert overridden[4].resume_from_checkpoint == "True" and overridden[1].image_size == 56
    # Every shipped config parses as train_hf.py reads it (unknown keys refused), and all Matek runs share one held-out split.
    for path in sorted((ROOT / "configs").glob("*.json")):
        data_args = parser.parse_args_into_dataclasses(train_hf.bf16_on_cpu(train_hf.config_as_arguments(str(path))))[0]
        assert (data_args.split_mode, data_args.split_block_size, data_args.split_seed) == ("block", 50, 42), path.name


def test_bf16_without_a_gpu_trains_on_the_cpu_instead_of_failing(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base = ["--train_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--report_to", "none"]
    for flags in (["--bf16"], ["--bf16", "True"]):
        args = train_hf.bf16_on_cpu(base + flags)
        assert args[-2:] == ["--use_cpu", "True"]
        training_args = train_hf.make_parser().parse_args_into_dataclasses(args)[4]
        assert training_args.bf16 and training_args.use_cpu
    for flags in ([], ["--bf16", "False"], ["--bf16", "--use_cpu", "False"]):  # nothing asked, or the user's own choice
        assert train_hf.bf16_on_cpu(base + flags) == base + flags
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train_hf.bf16_on_cpu(base + ["--bf16"]) == base + ["--bf16"]


def test_continuing_a_model_keeps_its_held_out_images_out_of_training(trained, small_kaggle_folder, tmp_path, caplog):
    from bmc.train.arguments import DataArguments
    from bmc.train.dataset import check_no_held_out_leak, prepare_data

    # Another training seed keeps the split (it follows --split_seed): continuing is allowed.
    _, _, manifest = prepare_data(DataArguments(train_dir=str(small_kaggle_folder), split_mode="random"), seed=123)
    check_no_held_out_leak(str(trained), manifest)
    # The other direction: an image the base model trained on, now in the new test split.
    base_rows = read_manifest(trained / "split_manifest.csv")
    learned = next(r for r in base_rows if r["split"] == "train")
    moved = [dict(r, split="test") if r is learned else r for r in base_rows]
    with pytest.raises(ValueError, match="1 validation/test images .* were training images of the base model"):
        check_no_held_out_leak(str(trained), moved)
    # Another split would train on the base model's validation/test images: refused before any training.
    code = train_hf.main(_args(small_kaggle_folder, tmp_path / "next", trained, "--split_seed", "8", "--num_train_epochs", "1"))
    assert code == 2
    assert "validation/test images of the base model" in caplog.text
    assert not (tmp_path / "next" / "model.safetensors").exists()


@pytest.fixture
def one_class_folder(tmp_path, shared_data):
    for src in matek_images("BLA", 4):
        (tmp_path / "cells" / "BLA").mkdir(parents=True, exist_ok=True)
        os.symlink(src, tmp_path / "cells" / "BLA" / src.name)
    return tmp_path / "cells"


def test_one_class_is_refused_before_any_model_is_loaded(one_class_folder, tmp_path, caplog, monkeypatch):
    import bmc.train.run

    monkeypatch.setattr(bmc.train.run, "load_for_training", lambda *a, **k: pytest.fail("the model must not be loaded"))
    code = train_hf.main(["--train_dir", str(one_class_folder), "--output_dir", str(tmp_path / "out"), "--report_to", "none"])
    assert code == 2 and "holds only one class (BLA): a classifier needs at least two" in caplog.text
    assert not (tmp_path / "out").exists()  # nothing written: no card with "100 % accuracy"


def test_a_typo_in_a_choice_is_refused_at_parse_time_in_one_line(tmp_path, capsys):
    for flag, value in (("--loss", "focall"), ("--split_mode", "blocks"), ("--balance", "domain")):
        with pytest.raises(SystemExit) as stop:
            train_hf.main(["--train_dir", str(tmp_path), "--output_dir", str(tmp_path / "out"), flag, value])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert re.search(f"argument {flag}.*: invalid choice: '{value}'", err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_image_size_is_rounded_to_whole_patches_with_a_warning(tmp_path, caplog):
    from bmc.train.arguments import ModelArguments

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2", "patch_size": 14}))
    assert ModelArguments(model_name_or_path=str(tmp_path), image_size=100).image_size == 98
    assert "not a multiple of the model's 14-px patches; using 98" in caplog.text
    assert ModelArguments(model_name_or_path="facebook/dinov2-small", image_size=112).image_size == 112
    with pytest.raises(ValueError, match="too small"):
        ModelArguments(model_name_or_path=str(tmp_path), image_size=10)
    with pytest.raises(ValueError, match="--colour_consistency -1.0: a weight"):
        ModelArguments(model_name_or_path=str(tmp_path), colour_consistency=-1.0)


def test_an_unreachable_hub_model_says_what_to_do_offline(small_kaggle_folder, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = train_hf.main(
        [
            "--train_dir",
            str(small_kaggle_folder),
            "--output_dir",
            str(tmp_path / "o"),
            "--report_to",
            "none",
            "--model_name_or_path",
            "facebook/dinov2-small",
            "--split_mode",
            "random",
        ]
    )
    assert code == 2
    assert "could not be fetched from the Hugging Face Hub (HF_HUB_OFFLINE=1 is set)" in caplog.text and "make base" in caplog.text


@pytest.mark.slow
def test_under_accelerate_launch_a_mistake_is_one_line_without_a_traceback(one_class_folder, tmp_path):
    import subprocess
    import sys

    from helpers import ROOT

    accelerate = Path(sys.executable).parent / "accelerate"
    result = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--quiet",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--num_cpu_threads_per_process",
            "2",
            str(ROOT / "train_hf.py"),
            "--train_dir",
            str(one_class_folder),
            "--output_dir",
            str(tmp_path / "o"),
            "--report_to",
            "none",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1  # accelerate's code for any failure of the script (docs/training.md, "Exit codes")
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "holds only one class" in lines[0], lines


def test_bad_arguments_give_a_message_not_a_traceback(tmp_path, caplog):
    assert train_hf.main(["--output_dir", str(tmp_path), "--report_to", "none"]) == 2
    assert "give --train_dir" in caplog.text
    assert train_hf.main(["--train_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path), "--report_to", "none"]) == 2
    assert "not found" in caplog.text


def test_class_weights_balance_the_pooled_classes():
    assert sample_weights([0, 0, 0, 1], ["a"] * 4, "class") == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])


def test_domain_class_weights_give_no_class_a_bonus_for_its_laboratory():
    # Marrow: 60 BLA + 20 NGS; blood: 10 NGS + 10 EBO (EBO only in blood, as in bmc's PBC data).
    labels = [0] * 60 + [1] * 20 + [1] * 10 + [2] * 10
    domains = ["marrow"] * 80 + ["blood"] * 20
    w = sample_weights(labels, domains, "domain_class", "equal")
    total = Counter()
    for label, domain, weight in zip(labels, domains, w):
        total[(domain, label)] += weight
    assert sum(w) == pytest.approx(len(w))  # mean 1
    # every class weighs the same within its domain, and the two domains the same in all
    assert total[("marrow", 0)] == pytest.approx(total[("marrow", 1)]) == pytest.approx(25.0)
    assert total[("blood", 1)] == pytest.approx(total[("blood", 2)]) == pytest.approx(25.0)
    by_size = sample_weights(labels, domains, "domain_class", "size")
    assert sum(x for x, d in zip(by_size, domains) if d == "marrow") == pytest.approx(80.0)
    # class-count weights instead make the blood-only class worth 3x a shared class in its own domain
    cls = sample_weights(labels, domains, "class")
    assert sum(cls[90:]) / sum(cls[80:90]) == pytest.approx(3.0)


def test_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0])
    ce = cell_loss(logits, labels, "ce", None)
    assert ce == pytest.approx(torch.nn.functional.cross_entropy(logits, labels))
    focal = cell_loss(logits, labels, "focal", None, gamma=2.0)
    assert focal < ce  # down-weights the easy example
    assert cell_loss(logits, labels, "focal", None, gamma=0.0) == pytest.approx(ce)
    weighted = cell_loss(logits, labels, "weighted_ce", torch.tensor([1.0, 3.0]))
    per_item = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert weighted == pytest.approx(float((per_item[0] + 3 * per_item[1]) / 4))
    assert cell_loss(logits, labels, "ce", torch.tensor([1.0, 3.0])) == pytest.approx(ce)  # plain ce ignores weights
    with pytest.raises(ValueError, match="unknown loss"):
        cell_loss(logits, labels, "hinge", None)


def test_failed_push_keeps_the_model_and_says_so(monkeypatch, tmp_path, caplog):
    def unreachable(*args, **kwargs):
        raise OSError("Hub unreachable")

    monkeypatch.setattr(train_hf, "run", lambda *a: {"test": {}})
    monkeypatch.setattr(train_hf, "publish", unreachable)
    code = train_hf.main(
        [
            "--train_dir",
            str(tmp_path),
            "--output_dir",
            str(tmp_path / "out"),
            "--report_to",
            "none",
            "--push_to_hub",
            "--hub_model_id",
            "me/x",
        ]
    )
    assert code == 3
    assert "push to the Hub failed (Hub unreachable)" in caplog.text and str(tmp_path / "out") in caplog.text


def test_a_small_data_set_under_the_block_split_falls_back_to_random_and_says_so(tmp_path, caplog):
    import logging

    from PIL import Image

    from bmc.train.arguments import DataArguments
    from bmc.train.dataset import prepare_data

    for code in ("BLA", "LYT"):
        (tmp_path / code).mkdir()
        for i in range(1, 16):  # one block of 50 per class: block mode could hold nothing out
            Image.new("RGB", (20, 20), (10 * i, 0, 0)).save(tmp_path / code / f"{code}_{i:05d}.png")
    with caplog.at_level(logging.WARNING, logger="bmc.train.run"):
        dsd, _, manifest = prepare_data(DataArguments(train_dir=str(tmp_path)), seed=0)
    assert "splitting at random instead" in caplog.text
    assert len(dsd["validation"]) > 0 and {r["split"] for r in manifest} >= {"train", "validation"}


def test_distillation_term_is_zero_when_the_student_agrees_and_counts_only_masked_images():
    from bmc.train.trainer import Teacher

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, pixel_values):
            return type("Out", (), {"logits": self.logits[: len(pixel_values)]})()

    teacher_logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    teacher = Teacher(Fixed(teacher_logits), columns=[2, 0], image_size=8, weight=1.0, temperature=2.0)
    pixels = torch.zeros(3, 3, 8, 8)
    agrees = torch.tensor([[0.0, 5.0, 2.0], [1.0, -3.0, 0.0], [9.0, 9.0, 9.0]])  # columns 2, 0 = teacher's logits
    mask = torch.tensor([True, True, False])
    assert teacher.loss(agrees, pixels, mask).item() == pytest.approx(0.0, abs=1e-6)
    disagrees = agrees.clone()
    disagrees[0, 2] = -2.0
    assert teacher.loss(disagrees, pixels, mask).item() > 0.1
    assert teacher.loss(disagrees, pixels, torch.zeros(3, dtype=torch.bool)).item() == 0.0
    # the unmasked third image never reaches the teacher, whatever its logits
    other = disagrees.clone()
    other[2] = torch.tensor([-9.0, 40.0, 3.0])
    assert teacher.loss(other, pixels, mask).item() == pytest.approx(teacher.loss(disagrees, pixels, mask).item())


def test_a_run_distils_from_an_earlier_model_on_the_images_it_trained_on(trained, small_kaggle_folder, tmp_path, caplog):
    caplog.set_level("INFO")
    code = train_hf.main(
        _args(
            small_kaggle_folder,
            tmp_path / "student",
            trained,
            "--num_train_epochs",
            "1",
            "--distill_from",
            str(trained),
            "--distill_weight",
            "1.0",
            "--max_train_samples",
            "16",
        )
    )
    assert code == 0
    assert re.search(r"distilling .* on (\d+) of 16 training images", caplog.text)
    assert json.loads((tmp_path / "student" / "metrics.json").read_text())["model_args"]["distill_from"] == str(trained)
    bad = train_hf.main(_args(small_kaggle_folder, tmp_path / "x", trained, "--distill_from", str(tmp_path)))
    assert bad == 2 and "not a model folder" in caplog.text


SGD = (
    "--optim",
    "sgd",
    "--learning_rate",
    "0.05",
    "--head_lr_multiplier",
    "1",
    "--layer_lr_decay",
    "1",
    "--loss",
    "ce",
    "--max_train_samples",
    "32",
)
"""Plain SGD for the process comparison: its steps follow the gradients' size, so two runs whose gradients agree stay
together (Adam's first steps are sign-like, which makes near-zero gradients of a random tiny model flip weights apart)."""


def _accelerate(processes: int, folder: Path, out: Path, model: Path, batch: int) -> subprocess.CompletedProcess:
    """``accelerate launch`` of a tiny 1-epoch run on ``processes`` CPU processes (gloo), ``batch`` images per process."""
    from helpers import ROOT

    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--quiet", "--num_machines", "1"]
    cmd += ["--num_processes", str(processes), "--mixed_precision", "no", "--dynamo_backend", "no"]
    args = _args(folder, out, model, "--num_train_epochs", "2", "--drop_path_rate", "0", "--logging_steps", "1", *SGD)
    if processes > 1:  # torch.distributed processes on the CPU, talking through gloo (the --cpu launcher runs one process)
        cmd += ["--multi_gpu", "--main_process_port", str(_free_port())]
        args += ["--use_cpu", "True", "--ddp_backend", "gloo"]
    else:
        cmd += ["--cpu"]
    args[args.index("--per_device_train_batch_size") + 1] = str(batch)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*cmd, str(ROOT / "train_hf.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(small_kaggle_folder, tiny_model_dir, tmp_path):
    """2 CPU processes × 8 images per step (gloo) against 1 process × 16: the same split, one calibration and one model
    folder written by the main process only, and the same training within a stated tolerance (float sums in another
    order). Plain cross-entropy and a training set that the global batch divides: bmc's class-weighted loss is a
    weighted mean per process, and a last short batch is padded per process, so the default recipe is close, not equal."""
    one = _accelerate(1, small_kaggle_folder, tmp_path / "one", tiny_model_dir, 16)
    two = _accelerate(2, small_kaggle_folder, tmp_path / "two", tiny_model_dir, 8)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "one" / "split_manifest.csv").read_text() == (tmp_path / "two" / "split_manifest.csv").read_text()
    assert (two.stdout + two.stderr).count("model, card and figures written to") == 1
    assert not list(tmp_path.glob(".bmc-export-*")), "a staging folder was left behind"
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m1["split_sizes"] == m2["split_sizes"]
    assert m1["training"]["per_device_train_batch_size"] * 1 == m2["training"]["per_device_train_batch_size"] * 2
    assert m2["calibration"]["temperature"] > 0 and len(read_manifest(tmp_path / "two" / "split_manifest.csv")) == 60
    # The same global batches: the training loss of every step (the processes' mean) matches the one-process run's.
    losses = [
        [
            h["loss"]
            for h in json.loads(max((tmp_path / d).glob("checkpoint-*/trainer_state.json")).read_text())["log_history"]
            if "loss" in h
        ]
        for d in ("one", "two")
    ]
    assert len(losses[0]) == len(losses[1]) >= 4
    assert max(abs(a - b) / a for a, b in zip(*losses)) <= MULTI_PROCESS_TOLERANCE, losses
    t1, t2 = m1["calibration"]["temperature"], m2["calibration"]["temperature"]
    assert abs(t1 - t2) / t1 <= 1e-3 and m1["validation"]["accuracy"] == m2["validation"]["accuracy"], (t1, t2)
    load_classifier(str(tmp_path / "two"))  # the folder the main process wrote loads as a model


MULTI_PROCESS_TOLERANCE = 1e-4
"""Largest relative difference of a step's training loss between the 1- and 2-process runs (docs/training.md)."""
