"""Concurrency stress run of the real app, on loopback only: many gradio_client users at once.

    python bench/stress.py                       # 16 clients × 50 requests (10 rounds); writes bench/stress.json
    python bench/stress.py --clients 4 --requests 10 --rounds 2

Each client is a separate ``gradio_client.Client`` in its own thread, sending a mix of single-cell
classifications and attribution maps (every fourth request; Grad-CAM and attention rollout in turn)
for real test-split cells. Requests run in rounds (every client sends ``requests / rounds`` per
round) and the app's resident memory is read after each round. The first rounds warm up (allocator
arenas, caches); a leak shows as growth over the second half of the rounds, which is reported.
Reported: requests served, failures (with their messages), latency percentiles per kind, memory per round.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.appserver import peak_rss_mb, rss_mb, running_app  # noqa: E402
from bench.run import held_out_images  # noqa: E402
from bmc.constants import DEFAULT_MODEL  # noqa: E402


def client_loop(
    url: str, cid: int, paths: list[str], n: int, rounds: int, barrier: threading.Barrier, records: list[dict], lock: threading.Lock
) -> None:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    per_round = n // rounds
    for r in range(n):
        if r and r % per_round == 0:
            barrier.wait()
        path = paths[(cid * n + r) % len(paths)]
        attribution = r % 4 == 3
        kind = ("Grad-CAM" if (cid + r) % 2 else "Attention rollout") if attribution else "classify"
        start = time.perf_counter()
        error = None
        try:
            if attribution:
                image, note, _curve = client.predict(handle_file(path), kind, "predicted class", 0.5, False, api_name="/explain")
                ok = bool(image) and kind in note
            else:
                label, verdict = client.predict(handle_file(path), 3, api_name="/classify")
                ok = bool(label.get("label")) and "calibrated confidence" in verdict
            if not ok:
                error = "unexpected response"
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, none may stop the run
            error = f"{type(exc).__name__}: {exc}"
        with lock:
            records.append({"client": cid, "round": r // per_round, "kind": kind, "seconds": time.perf_counter() - start, "error": error})
    barrier.wait()


def stress_clients(
    url: str, paths: list[str], clients: int, requests: int, rounds: int, after_round: Callable[[], None] | None = None
) -> list[dict]:
    """Run ``clients`` concurrent clients against ``url``; one record per request."""
    records: list[dict] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients, action=after_round)
    threads = [threading.Thread(target=client_loop, args=(url, c, paths, requests, rounds, barrier, records, lock)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def stress(model: Path, clients: int, requests: int, rounds: int) -> dict:
    paths = [p for p, _ in held_out_images(model, 200)]
    memory: list[float] = []
    with running_app(str(model)) as (url, proc):
        start_rss = rss_mb(proc.pid)
        t0 = time.perf_counter()
        # after each round, when every client has arrived at the barrier: the app's resident memory
        records = stress_clients(url, paths, clients, requests, rounds, after_round=lambda: memory.append(rss_mb(proc.pid)))
        wall = time.perf_counter() - t0
        peak = peak_rss_mb(proc.pid)
        alive = proc.poll() is None
    failures = [r for r in records if r["error"]]
    by_kind = {}
    for kind in sorted({r["kind"] for r in records}):
        secs = [r["seconds"] for r in records if r["kind"] == kind and not r["error"]]
        by_kind[kind] = {
            "n": len(secs),
            "p50_s": float(np.percentile(secs, 50)) if secs else None,
            "p95_s": float(np.percentile(secs, 95)) if secs else None,
            "max_s": max(secs) if secs else None,
        }
    ok = [r["seconds"] for r in records if not r["error"]]
    return {
        "clients": clients,
        "requests_per_client": requests,
        "rounds": rounds,
        "requests_sent": len(records),
        "requests_served": len(ok),
        "failures": len(failures),
        "failure_examples": sorted({f["error"] for f in failures})[:5],
        "p50_s": float(np.percentile(ok, 50)) if ok else None,
        "p95_s": float(np.percentile(ok, 95)) if ok else None,
        "by_kind": by_kind,
        "wall_s": wall,
        "throughput_req_s": len(ok) / wall,
        "rss_start_mb": start_rss,
        "rss_after_each_round_mb": memory,
        "peak_rss_mb": peak,
        "rss_growth_second_half_mb": memory[-1] - memory[len(memory) // 2 - 1] if len(memory) > 1 else None,
        "server_alive_after": alive,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path(DEFAULT_MODEL))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--rounds", type=int, default=10, help="memory is read after each round")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "stress.json")
    args = parser.parse_args(argv)
    if args.requests % args.rounds:
        parser.error("--requests must be a multiple of --rounds")
    result = stress(args.model, args.clients, args.requests, args.rounds)
    result["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "by_kind"}, indent=2))
    print(f"written {args.out}")
    return 0 if result["failures"] == 0 and result["server_alive_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
