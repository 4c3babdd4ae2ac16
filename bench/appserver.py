"""Start the real app (``app.py``) on a free loopback port, for the tests, the benchmark and the stress run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppStartError(RuntimeError):
    """The app exited or did not answer during start-up; the message holds its last output."""


@contextmanager
def running_app(
    model: str | None = None, timeout_s: float = 240, extra_env: dict[str, str] | None = None, root: Path = ROOT
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yield ``(url, process)`` of a started app (``root/app.py``, run in ``root``); terminate it afterwards."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SERVER_PORT": str(port), **(extra_env or {})}
    env.pop("GRADIO_SERVER_NAME", None)  # the app must pick loopback itself
    cmd = [sys.executable, str(root / "app.py")] + (["--model", model] if model else [])
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise AppStartError("app exited during start-up:\n" + proc.stdout.read()[-3000:])
            try:
                urllib.request.urlopen(url, timeout=2)  # nosec B310 # http://127.0.0.1, built above
                break
            except OSError:
                if time.time() > deadline:
                    raise AppStartError(f"app did not answer within {timeout_s:.0f} s") from None
                time.sleep(1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not reported (not Linux?)")


def rss_mb(pid: int) -> float:
    """Current resident memory (VmRSS) of a live process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not reported (not Linux?)")
