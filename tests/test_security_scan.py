"""Static security scan: bandit over bmc/, the two scripts and the benchmark must report nothing.

Checks skipped for the whole project are listed, each with its reason, under [tool.bandit] in
pyproject.toml; single-line exceptions carry a ``# nosec <id>`` with their reason on the line.
"""

import subprocess
import sys

from helpers import ROOT


def test_bandit_reports_no_issue():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bandit",
            "-q",
            "-c",
            "pyproject.toml",
            "-r",
            "bmc",
            "app.py",
            "train_hf.py",
            "bench",
            "-f",
            "custom",
            "--msg-template",
            "{relpath}:{line} {test_id} {msg}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
