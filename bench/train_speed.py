"""Training speed for ``bench/run.py``: ``train_hf.py``'s Trainer against a plain PyTorch loop on the same model,
data and augmentation (each in a child process, so one's memory and threads do not colour the other's), and the
machine the figures were taken on.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bmc.data import from_records
from bmc.model_folder import read_manifest
from bmc.serve.predictor import Predictor

ROOT = Path(__file__).resolve().parent.parent


def timed(fn: Any) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes, and what it returned."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_train(model: Path, steps: int = 6, batch: int = 32) -> dict:
    """``train_hf``'s Trainer vs a minimal PyTorch loop: same model, batch, augmentation, loss, steps.

    Run in a child process so that its peak memory is the training's alone."""
    with tempfile.TemporaryDirectory() as tmp:
        out_json = Path(tmp) / "train.json"
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "run.py"),
                "--train-child",
                str(out_json),
                "--model",
                str(model),
                "--steps",
                str(steps),
                "--batch",
                str(batch),
            ],
            check=True,
        )
        return json.loads(out_json.read_text())


def _train_child(model: Path, steps: int, batch: int, out_json: Path) -> None:
    """Time the same training steps twice, as a minimal PyTorch loop and as train_hf.py's Trainer."""
    from bmc.train.run import use_all_cores_when_alone

    use_all_cores_when_alone()
    ds, transform, label_maps, image_size = _train_data(model, steps, batch)
    plain_s, data_s = _time_plain_loop(model, ds, transform, label_maps, steps, batch)
    t_train, begin, end = _time_trainer(model, ds, transform, label_maps, steps, batch)
    _, begin_bf16, end_bf16 = _time_trainer(model, ds, transform, label_maps, steps, batch, bf16=True)
    gaps = [b - e for e, b in zip(end[:-1], begin[1:])]  # next batch fetched + collated in the gap
    step_wall = (end[-1] - begin[0]) if end else float("nan")
    result = {
        "steps": steps,
        "batch": batch,
        "image_size": image_size,
        "plain_loop_img_s": steps * batch / plain_s,
        "trainer_img_s": steps * batch / t_train,
        "trainer_steady_img_s": _steady_img_s(begin, end, batch),
        "plain_loop_data_share": data_s / plain_s,
        "trainer_data_share": sum(gaps) / step_wall if gaps else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # the same Trainer steps in bf16 autocast (the configs' "bf16": true)
        "trainer_bf16_steady_img_s": _steady_img_s(begin_bf16, end_bf16, batch),
        "cpu_bf16_instructions": _cpu_bf16_flags(),
    }
    if result["trainer_bf16_steady_img_s"] and result["trainer_steady_img_s"]:
        result["bf16_speedup_vs_fp32"] = result["trainer_bf16_steady_img_s"] / result["trainer_steady_img_s"]
    result["train_throughput_ratio_vs_plain_loop"] = result["trainer_img_s"] / result["plain_loop_img_s"]
    out_json.write_text(json.dumps(result))


def _steady_img_s(begin: list[float], end: list[float], batch: int) -> float | None:
    """Images per second from the second step's start to the last step's end (the first step warms up)."""
    return (len(begin) - 1) * batch / (end[-1] - begin[1]) if len(begin) > 1 else None


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` line of /proc/cpuinfo (None where there is no such file or line)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == field), None)


def _cpu_bf16_flags() -> list[str]:
    """The CPU's bfloat16 instructions (AMX, AVX512-BF16): bf16 training is only faster where they exist."""
    return sorted(f for f in (_cpuinfo("flags") or "").split() if f in {"amx_bf16", "avx512_bf16", "amx_tile"})


def _train_data(model: Path, steps: int, batch: int) -> tuple[Any, Any, tuple[dict, dict], int]:
    """Enough of the model's own training images for ``steps`` batches (twice over), weighted and augmented as in training."""
    from bmc.labels import label_maps as maps_of
    from bmc.train.augmentation import TrainTransform
    from bmc.train.trainer import sample_weights
    from bmc.transforms import processor_size

    codes = json.loads((model / "metrics.json").read_text())["classes"]
    rows = [r for r in read_manifest(model / "split_manifest.csv") if r["split"] == "train"][: steps * batch * 2]
    ds = from_records([(r["source"], r["label"]) for r in rows], codes)
    ds = ds.add_column("weight", sample_weights(ds["label"], [r.get("domain", "") for r in rows]))
    predictor = Predictor(str(model), "torch")
    transform = TrainTransform(predictor.processor, predictor.use_denoise, seed=0)
    return ds, transform, maps_of(codes), processor_size(predictor.processor)


def _time_plain_loop(model: Path, ds: Any, transform: Any, label_maps: tuple[dict, dict], steps: int, batch: int) -> tuple[float, float]:
    """A minimal PyTorch loop with timers around the data fetch; returns (total, data) seconds."""
    from torch.utils.data import DataLoader

    from bmc.model import load_for_training
    from bmc.train.trainer import cell_loss, collate

    torch.manual_seed(0)
    net = load_for_training(str(model), *label_maps).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    loader = DataLoader(ds.with_transform(transform), batch_size=batch, shuffle=True, collate_fn=collate)
    data_s = 0.0
    it = iter(loader)
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        inputs = next(it)
        data_s += time.perf_counter() - t0
        loss = cell_loss(
            net(pixel_values=inputs["pixel_values"]).logits, inputs["labels"], "weighted_ce", inputs["sample_weight"], label_smoothing=0.1
        )
        loss.backward()
        opt.step()
        opt.zero_grad()
    return time.perf_counter() - start, data_s


def _time_trainer(
    model: Path, ds: Any, transform: Any, label_maps: tuple[dict, dict], steps: int, batch: int, bf16: bool = False
) -> tuple[float, list[float], list[float]]:
    """The Trainer as train_hf.py builds it (in float32, or bf16 autocast as with ``--bf16``); returns
    total seconds and each step's begin and end times."""
    from transformers import TrainerCallback, TrainingArguments

    from bmc.model import load_for_training
    from bmc.train.trainer import CellTrainer, collate

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.begin: list[float] = []
            self.end: list[float] = []

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001 - Trainer callback signature
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            self.end.append(time.perf_counter())

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            max_steps=steps,
            per_device_train_batch_size=batch,
            learning_rate=1e-5,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            logging_steps=1000,
            label_smoothing_factor=0.1,
            disable_tqdm=True,
            seed=0,
            remove_unused_columns=False,
            bf16=bf16,
            use_cpu=bf16 and not torch.cuda.is_available(),
        )
        trainer = CellTrainer(
            model=load_for_training(str(model), *label_maps),
            args=args,
            train_dataset=ds.with_transform(transform),
            data_collator=collate,
            callbacks=[timer],
        )
        t_train, _ = timed(trainer.train)
    return t_train, timer.begin, timer.end


def machine() -> dict:
    cpu = _cpuinfo("model name") or platform.processor()
    import onnxruntime
    import transformers

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
