#!/usr/bin/env python
"""Fine-tune a bone marrow cell classifier with the Hugging Face Trainer.

Arguments follow transformers' ``run_image_classification.py`` (plus bmc's own, see
``bmc/train/arguments.py``); all ``TrainingArguments`` are accepted, or one JSON file holding them all::

    accelerate launch --quiet train_hf.py --train_dir ../shared/data/bone-marrow-cells --output_dir runs/x ...
    accelerate launch --quiet train_hf.py config.json
    accelerate launch --quiet train_hf.py config.json --resume_from_checkpoint True   # flags after the file override it

A mistake (a typo'd choice, a missing folder, one class only, no network for a Hub id) ends the run
with one line saying what to fix and exit code 2, before any data or model is loaded where it can
be. ``--quiet`` stops ``accelerate launch`` from adding its own traceback after that line.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys

import torch
from huggingface_hub.errors import HfHubHTTPError
from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import DataClassType, string_to_bool

from bmc.train.arguments import DataArguments, ExportArguments, HubArguments, ModelArguments
from bmc.train.hub import publish
from bmc.train.run import describe_write_error, run


def config_as_arguments(path: str) -> list[str]:
    """A JSON config as command-line arguments, so that flags after it override it
    (``train_hf.py config.json --resume_from_checkpoint True``)."""
    with open(path) as fh:
        config = json.load(fh)
    args: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        args += [f"--{key}", *(str(v) for v in values)]
    return args


def bf16_on_cpu(argv: list[str]) -> list[str]:
    """``--bf16`` on a machine without a GPU: TrainingArguments refuses it unless ``--use_cpu`` is
    given, so add that here. A config that asks for bf16 then trains in bf16 autocast on a CPU with
    AMX/AVX512-BF16 (2-3x faster than float32, docs/performance.md) and on a GPU where there is one."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--bf16", "--use_cpu"):
        pre.add_argument(flag, type=string_to_bool, nargs="?", const=True, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.bf16 and known.use_cpu is None and not torch.cuda.is_available():
        return [*argv, "--use_cpu", "True"]
    return argv


def _fail(message: str) -> int:
    """Log a user-fixable problem in one line; exit code 2 (as argparse uses for bad arguments)."""
    logging.getLogger("train_hf").error("%s", message)
    return 2


class _Parser(HfArgumentParser):
    """argparse prints the whole usage (hundreds of TrainingArguments flags) before a bad choice; one line is enough."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (all options: --help)\n")


def make_parser() -> HfArgumentParser:
    """The parser of every train_hf.py argument (bmc's dataclasses and all of TrainingArguments)."""
    return _Parser([DataClassType(t) for t in (DataArguments, ModelArguments, ExportArguments, HubArguments, TrainingArguments)])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = make_parser()
    try:
        if argv and argv[0].endswith(".json"):  # a config file, then optional overrides: the last value given wins
            argv = config_as_arguments(argv[0]) + argv[1:]
        argv = bf16_on_cpu(argv)
        # argparse itself reports a bad choice or type (usage line, exit code 2); the dataclasses check the rest
        data_args, model_args, export_args, hub_args, training_args = parser.parse_args_into_dataclasses(argv)
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    # bmc publishes the finished folder itself (with its own card), not the Trainer's checkpoints.
    push, training_args.push_to_hub = training_args.push_to_hub, False
    try:
        results = run(data_args, model_args, training_args, export_args)
    except (ValueError, FileNotFoundError, OSError) as exc:
        message = describe_write_error(exc) if isinstance(exc, OSError) else None
        return _fail(message or str(exc))
    except RuntimeError as exc:  # torch.save reports a full disk as a RuntimeError, not an OSError
        if "file write failed" not in str(exc) and "No space left" not in str(exc):
            raise
        return _fail(describe_write_error(OSError(errno.ENOSPC, str(exc))) or str(exc))
    if push and results:
        folder = export_args.export_dir or training_args.output_dir
        try:
            url = publish(folder, training_args.hub_model_id, token=training_args.hub_token, private=hub_args.hub_private)
        except (HfHubHTTPError, OSError, ValueError) as exc:
            # The trained model is already safe on disk: say so, and how to retry, instead of a traceback.
            logging.getLogger("train_hf").error(
                "push to the Hub failed (%s). The model is saved in %s; retry with "
                "huggingface-cli upload or --push_to_hub after fixing the cause.",
                exc,
                folder,
            )
            return 3
        logging.getLogger("train_hf").info("pushed to %s", url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
