"""CONTRACT TEST for --push_to_hub: no network here, so the Hub is a local HTTP server.

It checks what bmc *sends* (repo creation, one commit holding weights, processor, card, figures,
metrics; no checkpoints; the token only in the Authorization header), answering just enough of
the Hub API for huggingface_hub to finish. It does not prove the real Hub accepts the upload.
"""

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import ROOT, matek_images

from bmc.model_folder import MODEL_FOLDER_FILES

TOKEN = "hf_contract_test_token_1234567890"


class FakeHub(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, payload, status=200):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        FakeHub.requests.append(
            {"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        )
        return body

    def do_POST(self):
        body = self._record()
        host = f"http://{self.headers['Host']}"
        if self.path == "/api/repos/create":
            payload = json.loads(body)
            repo = f"{payload.get('organization') or 'me'}/{payload['name']}"
            self._reply({"url": f"{host}/{repo}", "name": repo})
        elif self.path == "/api/validate-yaml":
            self._reply({"errors": [], "warnings": []})
        elif "/preupload/" in self.path:
            files = json.loads(body)["files"]
            self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        elif "/commit/" in self.path:
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            self._reply({"commitUrl": f"{host}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40, "pullRequestUrl": None})
        else:
            self._reply({"error": "not faked"}, 404)

    def do_GET(self):
        self._record()
        if "/api/models/" in self.path:
            self._reply({"id": "me/bmc-test", "sha": "a" * 40, "siblings": []})
        elif self.path.startswith("/api/whoami"):
            self._reply({"name": "me", "type": "user"})
        else:
            self._reply({"error": "not faked"}, 404)

    do_HEAD = do_GET


@pytest.fixture
def fake_hub():
    FakeHub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_push_to_hub_sends_the_finished_model_in_one_commit(fake_hub, tiny_model_dir, tmp_path, shared_data):
    data = tmp_path / "cells"
    for code in ("BLA", "LYT"):
        for src in matek_images(code, 10):
            (data / code).mkdir(parents=True, exist_ok=True)
            os.symlink(src, data / code / src.name)
    out = tmp_path / "run"
    env = {**os.environ, "HF_ENDPOINT": fake_hub, "HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "train_hf.py"),
        "--train_dir",
        str(data),
        "--output_dir",
        str(out),
        "--model_name_or_path",
        str(tiny_model_dir),
        "--ignore_mismatched_sizes",
        "--image_size",
        "56",
        "--num_train_epochs",
        "1",
        "--per_device_train_batch_size",
        "8",
        "--eval_strategy",
        "epoch",
        "--save_strategy",
        "epoch",
        "--report_to",
        "none",
        "--split_mode",
        "random",
        "--push_to_hub",
        "--hub_model_id",
        "me/bmc-test",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]

    paths = [r["path"] for r in FakeHub.requests]
    assert "/api/repos/create" in paths
    commits = [r for r in FakeHub.requests if "/commit/main" in r["path"]]
    assert len(commits) == 1
    lines = [json.loads(line) for line in commits[0]["body"].decode().splitlines() if line.strip()]
    files = {line["value"]["path"]: line["value"] for line in lines if line["key"] == "file"}
    assert set(MODEL_FOLDER_FILES) <= set(files)
    assert not any(p.startswith("checkpoint-") for p in files)
    card = base64.b64decode(files["README.md"]["content"]).decode()
    assert "Research use only" in card and "me/bmc-test" in card
    # The token travels only as a bearer header, never in bodies, the card, or the logs.
    writes = [r for r in FakeHub.requests if r["path"] == "/api/repos/create" or "/commit/" in r["path"] or "/preupload/" in r["path"]]
    assert writes and all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in writes), [
        (r["path"], r["headers"].get("authorization", "")[:10]) for r in writes
    ]
    assert not any(TOKEN.encode() in r["body"] for r in FakeHub.requests)
    assert TOKEN not in result.stdout + result.stderr
    assert TOKEN not in "".join(p.read_text(errors="ignore") for p in Path(out).glob("*.*") if p.suffix in (".md", ".json", ".csv"))
