"""`python -m bmc count`: the differential count from the command line, with a progress bar."""

import csv
import os
import subprocess
import sys
import zipfile

import pytest
from helpers import ROOT, matek_images


@pytest.mark.slow  # three `bmc count` processes, each loading torch and a model
def test_count_a_folder_and_a_zip(tmp_path, tiny_model_dir, shared_data):
    folder = tmp_path / "slide"
    folder.mkdir()
    for p in matek_images("BLA", 3) + matek_images("LYT", 2):
        (folder / p.name).symlink_to(p)
    (folder / "notes.txt").write_text("x")
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(matek_images("NGS", 1)[0], "NGS_1.jpg")
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "bmc", "count", str(folder), str(archive), "--model", str(tiny_model_dir), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "6 nucleated cells counted" in result.stdout and "1 files skipped" in result.stdout
    assert "below 200" in result.stdout  # a 6-cell count is too small to read
    assert "6cell" in result.stderr.replace(" ", "")  # tqdm progress bar: the cells through the model, not the files read
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 7 and rows[-1]["skipped_reason"].startswith("not an image file type")
    assert (out / "report.html").is_file() and (out / "counts.png").is_file()

    # review: relabel one cell and confirm another from a CSV; the report counts the reviewed labels, the CSV keeps both
    first, second = rows[0], rows[1]
    new_label = next(c for c in ("BLA", "LYT", "NGS") if c != first["model_label"])
    review = tmp_path / "corrections.csv"
    review.write_text(f"image,label\n{first['file']},{new_label}\n{second['file']},{second['model_label']}\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bmc",
            "count",
            str(folder),
            str(archive),
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--review",
            str(review),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 reviewed, 1 relabelled" in result.stdout
    reviewed = {r["file"]: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert reviewed[first["file"]]["model_label"] == first["model_label"]
    assert reviewed[first["file"]]["reviewed_label"] == new_label and reviewed[first["file"]]["reviewed"] == "yes"
    assert reviewed[second["file"]]["reviewed_label"] == second["model_label"]

    kept = (out / "predictions.csv").read_bytes()  # the reviewed count: a bad review file after it must not lose it
    bad_files = {
        f"image,label\n{first['file']},Hairy cell\n": ["line 2", "not a class of this model (BLA"],  # and its classes
        f"image,label\n{first['file']},BLA\nnope.jpg,BLA\nnix.jpg,LYT\n": ["2 of the 3 reviewed images", "nope.jpg, nix.jpg"],
    }
    for text, said in bad_files.items():
        review.write_text(text)
        result = subprocess.run(
            [sys.executable, "-m", "bmc", "count", str(folder), "--model", str(tiny_model_dir), "--out", str(out), "--review", str(review)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(lines) == 1 and all(s in lines[0] for s in said), result.stderr[-2000:]
        assert "Traceback" not in result.stderr and (out / "predictions.csv").read_bytes() == kept


def test_missing_input_is_named(tmp_path, tiny_model_dir):
    result = subprocess.run(
        [sys.executable, "-m", "bmc", "count", str(tmp_path / "nope"), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr


def test_adapt_names_a_missing_learnt_folder_and_a_learnt_flag_without_a_count(tmp_path, tiny_model_dir, capsys):
    from bmc.__main__ import main

    (tmp_path / "cells" / "BLA").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_:
        main(["adapt", str(tiny_model_dir), str(tmp_path / "cells"), "--learnt", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2 and "not found" in capsys.readouterr().err
    code = main(["adapt", str(tiny_model_dir), str(tmp_path / "cells"), "--learnt", "--out", str(tmp_path / "o")])
    assert code == 2 and "give --learnt the folder of learnt cells" in capsys.readouterr().err


def test_compare_refuses_to_choose_by_a_test_set(tmp_path, capsys):
    from bmc.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--validation", "--heldout", "pbc-external", str(tmp_path)])
    assert exit_.value.code == 2 and "pbc-external is a test set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", "--heldout", "pbc-train", str(tmp_path)])
    assert "--heldout goes with --validation" in capsys.readouterr().err


def test_guard_needs_the_models_training_images_and_says_so(tiny_model_dir, capsys):
    from bmc.__main__ import main

    assert main(["guard", str(tiny_model_dir)]) == 2  # the tiny model has no split_manifest.csv
    assert "no split_manifest.csv" in capsys.readouterr().err
    assert not (tiny_model_dir / "single_cell_guard.safetensors").exists()


@pytest.mark.slow  # two `bmc` processes, each loading torch and a model
def test_fields_are_counted_cell_by_cell_and_an_unreadable_folder_says_why(tmp_path, tiny_model_dir, shared_data):
    fields = sorted((shared_data / "external-wbc" / "bccd-fields" / "JPEGImages").glob("*.jpg"))[:2]
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "bmc", "count", *map(str, fields), "--fields", "--model", str(tiny_model_dir), "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    names = [r["file"] for r in csv.DictReader(open(out / "predictions.csv")) if r["model_label"]]
    assert names and all("#" in n and n.split("#")[0] in {f.name for f in fields} for n in names)  # cell → its field and box
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"not an image")
    bad = subprocess.run(
        [sys.executable, "-m", "bmc", "count", str(junk), "--model", str(tiny_model_dir), "--out", str(tmp_path / "r2")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "skipped" in bad.stderr and "a.jpg" in bad.stderr and "no report written" in bad.stderr
    assert not (tmp_path / "r2").exists()


def _stumble(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run a front (``-m bmc …`` or ``app.py …``) offline as a newcomer would; its result and non-empty stderr lines."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    return result, [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("model", ["/nonexistent/model", "someone/no-such-model"])
def test_a_wrong_model_is_one_line_and_exit_code_2(tmp_path, model):
    result, lines = _stumble("-m", "bmc", "count", str(tmp_path), "--model", model, "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and lines[-1].startswith("error:") and "Traceback" not in result.stderr
    assert "--model " in lines[-1] and "--model_name_or_path" not in lines[-1]


def test_the_app_with_a_wrong_model_is_one_line_and_exit_code_2(tmp_path):
    result, lines = _stumble(str(ROOT / "app.py"), "--model", str(tmp_path / "no-model"))
    assert result.returncode == 2 and lines[-1].startswith("error:") and "Traceback" not in result.stderr, result.stderr[-2000:]


@pytest.mark.integration
def test_the_app_on_a_busy_port_is_one_line_and_exit_code_2(shared_data):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result, lines = _stumble(str(ROOT / "app.py"), "--port", str(port))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "--port" in errors[0] and "GRADIO_SERVER_PORT" in errors[0]


def test_every_command_exits_2_when_nothing_is_usable(tmp_path, tiny_model_dir, capsys):
    """One rule (``bmc --help``): nothing usable → exit 2 and one line, for locate as for count."""
    from bmc.__main__ import main

    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    assert main(["locate", str(notes), "--model", str(tiny_model_dir), "--out", str(tmp_path / "found")]) == 2
    assert "no cell found" in capsys.readouterr().err
    assert main(["count", str(notes), "--model", str(tiny_model_dir), "--out", str(tmp_path / "count")]) == 2
    for argv in (["card", str(tmp_path)], ["compare", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and "not a trained model folder" in capsys.readouterr().err


def test_a_local_model_path_that_does_not_exist_fails_at_once_without_a_hub_lookup(monkeypatch):
    import pytest

    from bmc.model import ModelNotFoundError, check_safetensors, looks_local

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # as a direct bmc call without make's environment
    for name in ("models/typo", "./typo", "runs/a/export", "~/m"):
        assert looks_local(name), name
        with pytest.raises(ModelNotFoundError, match="no such folder"):
            check_safetensors(name)
    assert not looks_local("facebook/dinov2-small")  # a Hub id still goes to the Hub
