#!/usr/bin/env python
"""Gradio app: classify one cell (top-k, calibrated), explain it (Captum maps), count and review many cells.

    python app.py                       # bundled default model, http://127.0.0.1:7860
    python app.py --model DIR_OR_HUB_ID --port 7861
    BMC_MODEL=... GRADIO_SERVER_NAME=0.0.0.0 python app.py     # e.g. in a Hugging Face Space

This file only parses arguments and launches: the handlers (a class, so they can be called without a server) live
in :mod:`bmc.ui.handlers`, the screens that wire them into ``gr.Blocks`` in :mod:`bmc.ui.layout`, and prediction,
explanation and reporting in the rest of ``bmc``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from bmc.serve.flags import add_model_arguments, predictor_from_args
from bmc.ui.handlers import EXAMPLES_DIR, CellApp
from bmc.ui.layout import CSS, build_app, zoomed

__all__ = ["CellApp", "build_app", "main", "zoomed"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    examples_dir = Path(os.environ.get("BMC_EXAMPLES") or EXAMPLES_DIR)
    demo = build_app(predictor_from_args(args), examples_dir)
    try:
        demo.launch(server_name=args.host, server_port=args.port, show_error=False, allowed_paths=[str(examples_dir)], css=CSS)
    except OSError as exc:  # e.g. the port is taken: one line and how to choose another, not Gradio's traceback
        print(
            f"error: cannot serve on {args.host}:{args.port} ({str(exc).splitlines()[0]}); choose another port with "
            "--port N or GRADIO_SERVER_PORT=N (make demo PORT=N)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
