"""Accuracy per cost for ``bench/run.py``: test macro-F1 beside forward FLOPs and parameters, per route."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
CONVNEXT_METRICS = ROOT / "docs" / "comparison" / "convnext-scratch-128"


def _pbc_accuracy(metrics: dict) -> float | None:
    """Accuracy on the PBC external set, whichever metrics.json layout the model folder has."""
    from bmc.train.evaluation import external_results

    pbc = external_results(metrics).get("pbc-external")
    return pbc["accuracy"] if pbc else None


def _model_gflops(net: torch.nn.Module, processor: Any) -> float:
    """Forward FLOPs of one image (torch's FLOP counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    from bmc.transforms import processor_size

    size = processor_size(processor)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(pixel_values=torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def bench_cost(model: Path) -> dict:
    """Accuracy per cost: test macro-F1 beside forward FLOPs (one image) and parameters, per route."""
    from bmc.model import load_classifier
    from bmc.transforms import build_image_processor

    def flops(net: torch.nn.Module, size: int) -> float:
        return _model_gflops(net, build_image_processor(size)) * 1e9

    def route(net: torch.nn.Module, metrics: dict) -> dict:
        size = metrics["model_args"]["image_size"]
        return {
            "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
            "image_size": size,
            "gflops": flops(net, size) / 1e9,
            "test_macro_f1": metrics["test"]["macro_f1"],
            "external_accuracy": _pbc_accuracy(metrics),
        }

    m = json.loads((model / "metrics.json").read_text())
    routes = {m["model_name"]: route(load_classifier(str(model))[0], m)}
    if (CONVNEXT_METRICS / "metrics.json").is_file():
        from transformers import AutoConfig, AutoModelForImageClassification

        c = json.loads((CONVNEXT_METRICS / "metrics.json").read_text())
        config = AutoConfig.from_pretrained(CONVNEXT_METRICS)  # nosec B615 # a folder in this repository
        # FLOPs depend on the architecture only: a randomly initialised copy measures them
        routes[c["model_name"]] = route(AutoModelForImageClassification.from_config(config).eval(), c)
    for r in routes.values():
        r["macro_f1_per_gflop"] = r["test_macro_f1"] / r["gflops"]
    return routes
