"""bmc's performance benchmark: inference, latency, attribution, training, memory, accuracy per cost.

    python bench/run.py                       # writes bench/results.json (its total_s says how long it took)
    python bench/run.py --only inference      # one section (inference, latency, attribution, train, app, cost, review)

Peers are measured side by side in the same run and reported as ratios, because absolute times on a
shared 2-core machine are noisy. The images are real cells from the bundled model's *test* split
(``split_manifest.csv``), read from ``../shared/data``. The machine, its load average at the start
and the library versions are written next to the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

from bench.cost import _model_gflops, bench_cost  # noqa: E402
from bench.train_speed import _train_child, bench_train, machine  # noqa: E402
from bmc.constants import DEFAULT_MODEL  # noqa: E402
from bmc.images import open_image  # noqa: E402
from bmc.model_folder import read_manifest  # noqa: E402
from bmc.serve.predictor import Predictor  # noqa: E402

SECTIONS = ("inference", "latency", "attribution", "train", "app", "cost", "review")
REVIEW_CELLS, REVIEWED = 2000, 200
"""The learning review's goal: a refit plus re-label of a 2,000-cell count with 200 reviewed cells in <= 1 s."""


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def held_out_images(model_dir: Path, n: int) -> list[tuple[str, str]]:
    """``n`` (path, code) pairs from the model's test split, spread over the classes."""
    rows = [r for r in read_manifest(model_dir / "split_manifest.csv") if r["split"] == "test"]
    rows = [r for r in rows if Path(r["source"]).is_file()]
    if not rows:
        sys.exit(f"no test-split images found (is ../shared/data there?): {model_dir / 'split_manifest.csv'}")
    step = max(1, len(rows) // n)
    return [(r["source"], r["label"]) for r in rows[::step][:n]]


# ------------------------------------------------------------------------------------------- sections


def bench_inference(model: Path, images: list[tuple[str, str]]) -> dict:
    """Folder throughput: bmc's batched predictor (each backend) vs ``pipeline`` called per image."""
    from transformers import pipeline

    paths = [p for p, _ in images]
    codes = [c for _, c in images]
    classify = pipeline("image-classification", model=str(model), device="cpu")
    classify(paths[0])  # warm-up
    t_pipe, naive = timed(lambda: [classify(p, top_k=1)[0]["label"] for p in paths])
    out: dict[str, Any] = {
        "n_images": len(paths),
        "naive_pipeline_img_s": len(paths) / t_pipe,
        "naive_pipeline_accuracy": float(np.mean([a == b for a, b in zip(naive, codes)])),
    }
    for backend in ("torch", "auto", "onnx-int8"):  # "auto" is what the app uses (ONNX Runtime fp32 when it loads)
        t_load, predictor = timed(lambda backend=backend: Predictor(str(model), backend))
        if backend == "auto":
            out["default_backend"] = predictor.backend
        predictor.logits([open_image(paths[0])])  # warm-up
        t, top = timed(lambda predictor=predictor: _predict_files(predictor, paths))
        key = predictor.backend.replace("-", "_")
        out[f"bmc_{key}_img_s"] = len(paths) / t
        out[f"bmc_{key}_load_s"] = t_load  # includes the one-off ONNX export when the cache is empty
        out[f"bmc_{key}_top1_agreement_vs_pipeline"] = float(np.mean([a == b for a, b in zip(top, naive)]))
        out[f"bmc_{key}_accuracy"] = float(np.mean([a == b for a, b in zip(top, codes)]))
        out[f"speedup_{key}_vs_pipeline"] = out[f"bmc_{key}_img_s"] / out["naive_pipeline_img_s"]
    out["where_the_time_goes"] = _inference_evidence(classify, paths[:40], out)
    return out


def _inference_evidence(classify: Any, paths: list[str], out: dict) -> dict:
    """Why batching cannot give much more: the naive pipeline's time per image split into its stages,
    and the model's achieved FLOP rate beside this CPU's dense matrix-multiply rate (the ceiling)."""
    stages = {"preprocess": 0.0, "forward": 0.0, "postprocess": 0.0}
    for p in paths:
        t0 = time.perf_counter()
        inputs = classify.preprocess(p)
        t1 = time.perf_counter()
        with torch.inference_mode():
            outputs = classify._forward(inputs)
        t2 = time.perf_counter()
        classify.postprocess(outputs, top_k=1)
        t3 = time.perf_counter()
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2)):
            stages[key] += dt
    total = sum(stages.values())
    a = torch.randn(2048, 2048)
    a @ a
    t_mm = statistics.median(timed(lambda: a @ a)[0] for _ in range(5))
    gflop = _model_gflops(classify.model, classify.image_processor)
    return {
        "naive_stage_share": {k: v / total for k, v in stages.items()},
        "model_gflop_per_image": gflop,
        "matmul_gflop_s": 2 * 2048**3 / t_mm / 1e9,
        "achieved_gflop_s": {k.removeprefix("bmc_").removesuffix("_img_s"): v * gflop for k, v in out.items() if k.endswith("_img_s")},
    }


def _predict_files(predictor: Predictor, paths: list[str], batch_size: int = 32) -> list[str]:
    """What ``python -m bmc count`` does per batch: decode with bmc's checks, then one batched forward."""
    tops = []
    for start in range(0, len(paths), batch_size):
        images = [open_image(p) for p in paths[start : start + batch_size]]
        tops += [p.top_code for p in predictor.predict(images, batch_size)]
    return tops


def bench_latency(model: Path, images: list[tuple[str, str]], repeats: int = 60) -> dict:
    """One uploaded image through the app's path: decode → preprocess → forward → calibrated top-k."""
    from bmc.calibration import softmax
    from bmc.transforms import preprocess

    predictor = Predictor(str(model))
    blobs = [Path(p).read_bytes() for p, _ in images[:repeats]]

    parts: dict[str, list[float]] = {"decode": [], "preprocess": [], "forward": [], "postprocess": []}
    for i, blob in enumerate([blobs[0]] * 5 + blobs):
        t0 = time.perf_counter()
        image = open_image(blob)
        t1 = time.perf_counter()
        pixels = preprocess([image], predictor.processor, predictor.use_denoise)
        t2 = time.perf_counter()
        logits, _embeddings = predictor.runner(pixels)
        t3 = time.perf_counter()
        probs = softmax(logits, predictor.temperature)[0]
        _top = sorted(zip(predictor.codes, probs), key=lambda kv: -kv[1])[:3]
        t4 = time.perf_counter()
        if i >= 5:  # the first five are warm-up
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key].append(dt)
    total = [sum(v) for v in zip(*parts.values())]
    pre_post = [d + p + q for d, p, q in zip(parts["decode"], parts["preprocess"], parts["postprocess"])]
    return {
        "backend": predictor.backend,
        "n": len(total),
        "median_ms": 1000 * statistics.median(total),
        "p95_ms": 1000 * float(np.percentile(total, 95)),
        **{f"{k}_median_ms": 1000 * statistics.median(v) for k, v in parts.items()},
        "pre_post_share": float(np.sum(pre_post) / np.sum(total)),
    }


def bench_attribution(model: Path, images: list[tuple[str, str]], repeats: int = 3) -> dict:
    """Each method's cost at the app's defaults, as a multiple of one PyTorch forward pass of one image."""
    from bmc.serve.explain import Explainer

    predictor = Predictor(str(model), "torch")
    explainer = Explainer(predictor.model, predictor.processor, predictor.use_denoise)
    image = open_image(images[0][0])
    x = explainer.pixels(image)
    with torch.inference_mode():
        for _ in range(3):
            predictor.model(pixel_values=x)
        forward = statistics.median(timed(lambda: predictor.model(pixel_values=x))[0] for _ in range(10))
    out: dict[str, Any] = {"forward_ms": 1000 * forward}
    for method in explainer.methods():
        explainer.explain(image, method, target=0)  # warm-up
        seconds = statistics.median(timed(lambda method=method: explainer.explain(image, method, target=0))[0] for _ in range(repeats))
        key = method.lower().replace(" ", "_").replace("-", "")
        out[f"{key}_s"] = seconds
        out[f"{key}_x_forward"] = seconds / forward
    from bmc.serve.explain import IG_STEPS

    out["ig_steps"] = IG_STEPS
    out["integrated_gradients_x_forward_per_step"] = out["integrated_gradients_x_forward"] / IG_STEPS
    out["slowest_default_s"] = max(v for k, v in out.items() if k.endswith("_s") and k != "forward_ms")
    out["integrated_gradients_breakdown"] = _ig_breakdown(predictor.model, x, forward)
    return out


def _ig_breakdown(model: torch.nn.Module, x: torch.Tensor, forward: float) -> dict:
    """Why IG costs what it costs: one batch of ``IG_STEPS`` path points, forward only and forward +
    backward to the input (weights frozen, as in bmc.serve.explain), per image, in single-forward units."""
    from bmc.serve.explain import IG_STEPS, parameters_frozen

    xs = x.repeat(IG_STEPS, 1, 1, 1)
    with torch.inference_mode():
        fwd = statistics.median(timed(lambda: model(pixel_values=xs))[0] for _ in range(3))

    def forward_backward() -> None:
        xi = xs.clone().requires_grad_(True)
        model(pixel_values=xi).logits[:, 0].sum().backward()

    with parameters_frozen(model):
        forward_backward()
        both = statistics.median(timed(forward_backward)[0] for _ in range(3))
    return {
        "batched_forward_per_image_x_forward": fwd / IG_STEPS / forward,
        "batched_forward_backward_per_image_x_forward": both / IG_STEPS / forward,
    }


def bench_app(model: Path, images: list[tuple[str, str]]) -> dict:
    """Peak RSS of the real app serving the model, after classify, Grad-CAM and a 32-cell count."""
    from gradio_client import Client, handle_file

    from bench.appserver import peak_rss_mb, running_app

    paths = [p for p, _ in images]
    with running_app(str(model)) as (url, proc):
        rss_idle = peak_rss_mb(proc.pid)
        client = Client(url, verbose=False)
        for p in paths[:10]:
            client.predict(handle_file(p), 3, api_name="/classify")
        client.predict(handle_file(paths[0]), "Grad-CAM", "predicted class", 0.5, False, api_name="/explain")
        client.predict([handle_file(p) for p in paths[:32]], api_name="/count")
        return {"app_start_rss_mb": rss_idle, "app_peak_rss_mb": peak_rss_mb(proc.pid)}


def bench_review(model: Path, images: list[tuple[str, str]], repeats: int = 5) -> dict:
    """One refit of the learning review plus the re-label of every unreviewed cell, for a count of
    ``REVIEW_CELLS`` cells (the held-out images' real logits and embeddings, repeated with a little noise)
    with ``REVIEWED`` reviewed; the head is forced to be adopted (the slowest path: its final fit too)."""
    from bmc.count.learning import relabel

    predictor = Predictor(str(model))
    logits, embeddings = predictor.forward([open_image(p) for p, _ in images])
    rng = np.random.default_rng(0)
    reps = -(-REVIEW_CELLS // len(logits))
    logits = np.tile(logits, (reps, 1))[:REVIEW_CELLS]
    embeddings = np.tile(embeddings, (reps, 1))[:REVIEW_CELLS] + rng.normal(0, 0.01, (REVIEW_CELLS, embeddings.shape[1]))
    codes = {c: i for i, c in enumerate(predictor.codes)}
    truth = np.tile([codes[c] for _, c in images], reps)[:REVIEW_CELLS]
    reviewed = {int(i): int(truth[i]) for i in rng.choice(REVIEW_CELLS, REVIEWED, replace=False)}
    times, learnt = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        state = relabel(logits, embeddings, reviewed, predictor.temperature, predictor.threshold, validation_flagged=1e-3)
        times.append(time.perf_counter() - t0)
        learnt = state.learnt
    return {
        "cells": REVIEW_CELLS,
        "reviewed": REVIEWED,
        "refit_relabel_s_median": statistics.median(times),
        "refit_relabel_s_max": max(times),
        "head_adopted": learnt,
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------------- report


def headline(r: dict) -> dict:
    """The figures the README's table and the issue ask for, under stable names."""
    inf, lat, att, tr = r.get("inference", {}), r.get("latency", {}), r.get("attribution", {}), r.get("train", {})
    best = inf.get("default_backend", "onnx").replace("-", "_")
    return {
        "inference_speedup_vs_pipeline": inf.get(f"speedup_{best}_vs_pipeline"),
        "top1_agreement": inf.get(f"bmc_{best}_top1_agreement_vs_pipeline"),
        "int8_top1_agreement": inf.get("bmc_onnx_int8_top1_agreement_vs_pipeline"),
        "single_latency_median_ms": lat.get("median_ms"),
        "single_latency_p95_ms": lat.get("p95_ms"),
        "single_latency_pre_post_share": lat.get("pre_post_share"),
        "gradcam_cost_x_forward": att.get("gradcam_x_forward"),
        "ig_cost_per_step_x_forward": att.get("integrated_gradients_x_forward_per_step"),
        "occlusion_cost_x_forward": att.get("occlusion_x_forward"),
        "attention_rollout_cost_x_forward": att.get("attention_rollout_x_forward"),
        "slowest_attribution_default_s": att.get("slowest_default_s"),
        "train_throughput_ratio_vs_plain_loop": tr.get("train_throughput_ratio_vs_plain_loop"),
        "data_share_of_train_step": tr.get("trainer_data_share"),
        "train_bf16_speedup_vs_fp32": tr.get("bf16_speedup_vs_fp32"),
        "train_peak_rss_mb": tr.get("peak_rss_mb"),
        "app_peak_rss_mb": r.get("app", {}).get("app_peak_rss_mb"),
        "review_refit_relabel_s_2000_cells": r.get("review", {}).get("refit_relabel_s_median"),
    }


def print_table(h: dict) -> None:
    goals = {
        "inference_speedup_vs_pipeline": ">= 4",
        "top1_agreement": "1.0 (fp32)",
        "single_latency_pre_post_share": "< 0.25",
        "gradcam_cost_x_forward": "<= 3",
        "ig_cost_per_step_x_forward": "<= 0.6",
        "slowest_attribution_default_s": "< 5",
        "train_throughput_ratio_vs_plain_loop": "~1",
        "data_share_of_train_step": "<= 0.2",
        "review_refit_relabel_s_2000_cells": "<= 1",
    }
    print(f"| {'measure':38} | {'value':>10} | goal |\n|{'-' * 40}|{'-' * 12}|------|")
    for k, v in h.items():
        text = "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
        print(f"| {k:38} | {text:>10} | {goals.get(k, '')} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path(DEFAULT_MODEL))
    parser.add_argument("--n-images", type=int, default=500)
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--train-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=6, help="training steps per peer")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    if args.train_child:
        _train_child(args.model, args.steps, args.batch, args.train_child)
        return 0

    results: dict[str, Any] = {
        "machine": machine(),
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    images = held_out_images(args.model, args.n_images)
    sections = args.only or SECTIONS
    runners = {
        "inference": lambda: bench_inference(args.model, images),
        "latency": lambda: bench_latency(args.model, images),
        "attribution": lambda: bench_attribution(args.model, images),
        "train": lambda: bench_train(args.model, args.steps, args.batch),
        "app": lambda: bench_app(args.model, images),
        "cost": lambda: bench_cost(args.model),
        "review": lambda: bench_review(args.model, images),
    }
    t0 = time.perf_counter()
    for name in sections:
        print(f"[bench] {name} ...", flush=True)
        seconds, results[name] = timed(runners[name])
        results[name]["section_s"] = seconds
    results["total_s"] = time.perf_counter() - t0
    if args.only and args.out.is_file():  # a partial run updates its sections and keeps the others
        stored = json.loads(args.out.read_text())
        stored.setdefault("sections_rerun", {}).update({name: results["started"] for name in sections})
        stored.update({name: results[name] for name in sections})
        results = stored
    # The headline figures sit at the top level of the file, under the names the README's table uses.
    results.update(headline(results))
    print_table(headline(results))
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
