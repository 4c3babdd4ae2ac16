"""bmc as a package: a wheel built from the repository, installed without -e into a fresh venv, works on its own."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import BUNDLED, ROOT, matek_images


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with the bmc wheel installed (no -e); the dependencies come from the test venv,
    added as a plain path (not a site dir, so the test venv's editable bmc is not on it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next((tmp / "dist").glob("bmc-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (purelib / "_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return venv


def _run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )


@pytest.mark.slow
def test_the_installed_package_is_not_the_repository(installed, tmp_path):
    result = _run(
        installed, "python", "-c", "import bmc, bmc.train.model_card as m; print(bmc.__file__); print(m.TEMPLATE.is_file())", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    where, template = result.stdout.split()
    assert str(installed) in where and template == "True"  # the card template is package data


@pytest.mark.slow
def test_installed_bmc_renders_a_card_and_counts_cells(installed, tmp_path, shared_data):
    model = tmp_path / "model"
    model.mkdir()
    for f in BUNDLED.iterdir():  # a model folder outside the repository
        (model / f.name).symlink_to(f)
    (model / "README.md").unlink()
    result = _run(installed, "bmc", "card", str(model), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Research use only" in (model / "README.md").read_text()

    cells = tmp_path / "cells"
    cells.mkdir()
    for p in matek_images("NGS", 2) + matek_images("LYT", 2):
        (cells / p.name).symlink_to(p)
    result = _run(
        installed, "bmc", "count", str(cells), "--model", str(model), "--backend", "torch", "--out", str(tmp_path / "r"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 nucleated cells counted" in result.stdout and (tmp_path / "r" / "report.html").is_file()
