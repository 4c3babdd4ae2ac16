"""Command-line flags shared by ``app.py`` and ``bmc count``: one definition of how a model is chosen.

Kept free of torch and transformers so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from bmc.constants import DEFAULT_MODEL
from bmc.serve.backends import BACKENDS

if TYPE_CHECKING:
    from bmc.serve.predictor import Predictor


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--backend``, ``--revision``, ``--allow-pickle-weights``."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model folder or Hub id (default: the bundled model; env BMC_MODEL)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=os.environ.get("BMC_BACKEND", "auto"),
        help="auto: ONNX Runtime float32 (same predictions, faster on CPU), else PyTorch",
    )
    parser.add_argument("--revision", default=None, help="branch, tag or commit of a Hub model id (pin a commit)")
    parser.add_argument(
        "--allow-pickle-weights",
        action="store_true",
        help="also load a model that has only pytorch_model.bin (torch's weights-only unpickler); off by default",
    )


def predictor_from_args(args: argparse.Namespace) -> Predictor:
    """A :class:`bmc.serve.predictor.Predictor` from the flags of :func:`add_model_arguments`."""
    from bmc.model import ModelNotFoundError, UnsafeModelError
    from bmc.serve.predictor import Predictor  # lazy (torch, transformers): `--help` answers at once

    try:
        return Predictor(args.model, args.backend, args.allow_pickle_weights, args.revision)
    except (ModelNotFoundError, UnsafeModelError, FileNotFoundError) as exc:  # a user's mistake: one line, exit code 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
