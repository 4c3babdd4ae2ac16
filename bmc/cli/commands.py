"""The ``bmc`` subcommands, one function each: ``args`` in, exit status out.

One rule for every command: 0 when it did its work; 2 with one line on stderr when there was nothing usable (a
path that does not exist, no readable image, no cell found, a bad model folder or command line); anything else is a
bug and prints a traceback.

Each imports what it uses inside, not at the top: ``bmc --help`` and a mistyped flag answer in 0.1 s instead of
the 3-5 s that torch, transformers and datasets take to import.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class UsageError(ValueError):
    """A mistake in the command line (a missing path, flags that do not go together): argparse's usage + one line."""


def _not_a_model(exc: FileNotFoundError) -> str:
    """One line for a model folder that lacks a file a trained folder has (``metrics.json``, ``config.json``)."""
    return f"not a trained model folder: {exc.filename} not found"


def count(args: argparse.Namespace) -> int:
    """``bmc count``."""
    from bmc.count.differential import predict_stream, report_for
    from bmc.count.report import read_corrections, write_all
    from bmc.serve.flags import predictor_from_args
    from bmc.serve.uploads import UploadError, iter_images

    missing = [str(p) for p in [*args.inputs, *([args.review] if args.review else [])] if not Path(p).exists()]
    if missing:
        raise UsageError(f"not found: {', '.join(missing)}")
    predictor = predictor_from_args(args)
    try:
        items = iter_images(args.inputs)
        if args.fields:
            from bmc.locate.fields import iter_field_cells

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
            review = read_corrections(args.review, report)  # a bad file: one line, nothing applied, nothing written
            report = report.reviewed(review.labels, seen=review.seen)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for note in review.notes:
            print(f"note: {note}")
    paths = write_all(report, args.out)
    print(report.headline(), f"{len(skipped)} files skipped.")
    for warning in report.warnings:
        print(f"warning: {warning}")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def adapt(args: argparse.Namespace) -> int:
    """``bmc adapt``."""
    from bmc.lab.adapt import adapt_model

    learnt_dir = [args.learnt] if isinstance(args.learnt, Path) else []
    missing = [str(p) for p in [args.cells, *args.images, *learnt_dir] if not p.exists()]
    if missing:
        raise UsageError(f"not found: {', '.join(missing)}")
    if args.out.exists() and any(args.out.iterdir()):
        raise UsageError(f"{args.out} exists and is not empty: choose a new folder (nothing is overwritten)")
    try:
        out, summary = adapt_model(
            args.model, args.cells, args.out, args.images, args.replay_per_class, not args.no_forgetting, learnt=args.learnt
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lab = summary["lab_out_of_fold"]
    learnt = f", and {summary['learnt_cells']} learnt cells trained on" if summary["learnt_cells"] else ""
    print(f"adapted model: {out} ({lab['n']} cells{learnt}; out of fold: accuracy {lab['accuracy']:.3f}, macro-F1 {lab['macro_f1']:.3f})")
    for name, fig in summary["base_test"].items():
        print(f"{name} test: macro-F1 {fig['macro_f1_before']:.3f} -> {fig['macro_f1_after']:.3f}")
    if args.push_to_hub:
        from bmc.train.hub import publish

        print(f"pushed to {publish(out, args.push_to_hub)}")
    return 0


def guard(args: argparse.Namespace) -> int:
    """``bmc guard``."""
    from bmc.train.guard import guard_model_folder

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
    return 0


def locate(args: argparse.Namespace) -> int:
    """``bmc locate``."""
    from bmc.locate.fields import locate_fields
    from bmc.serve.flags import predictor_from_args
    from bmc.serve.uploads import UploadError, iter_images

    missing = [str(p) for p in args.inputs if not Path(p).exists()]
    if missing:
        raise UsageError(f"not found: {', '.join(missing)}")
    try:
        lines = locate_fields(predictor_from_args(args), iter_images(args.inputs), args.out)
    except UploadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    with open(args.out / "cells.csv") as fh:
        found = sum(1 for _ in fh) - 1  # the header
    if not found:
        print(f"error: no cell found in {', '.join(map(str, args.inputs))}", file=sys.stderr)
        return 2
    return 0


def base_weights(args: argparse.Namespace) -> int:
    """``bmc base-weights``."""
    from bmc.train.base_weights import materialise_convnext_scratch, materialise_dinov2_small

    make = materialise_dinov2_small if args.arch == "dinov2-small" else materialise_convnext_scratch
    print(make(args.out))
    return 0


def compare(args: argparse.Namespace) -> int:
    """``bmc compare``."""
    from bmc.train.comparison import comparison_table, validation_table

    if args.heldout and not args.validation:
        raise UsageError("--heldout goes with --validation")
    try:
        print(validation_table(args.model_dirs, args.heldout) if args.validation else comparison_table(args.model_dirs))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    except FileNotFoundError as exc:
        raise UsageError(_not_a_model(exc)) from None
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """``bmc evaluate``."""
    from bmc.train.evaluation import external_results
    from bmc.train.folder import evaluate_model_dir

    optional = [p for p in (args.unseen, args.targets) if p]
    missing = [p for p in [args.model_dir, *args.external, *optional] if not Path(p).exists()]
    if missing:
        raise UsageError(f"not found: {', '.join(map(str, missing))}")
    targets = json.loads(args.targets.read_text()) if args.targets else None
    try:
        metrics = evaluate_model_dir(args.model_dir, args.external, args.unseen, targets, args.recalibrate)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    for name, result in external_results(metrics).items():
        print(f"{name}: {result['n_images']} images, accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}")
    for t in metrics.get("targets", []):
        value = "missing" if t["value"] is None else f"{t['value']:.3f}"
        print(f"| {t['what']} | {value} | {t['goal']} {'✓' if t['met'] else '✗'} |")
    print(f"card: {args.model_dir / 'README.md'}")
    return 0


def card(args: argparse.Namespace) -> int:
    """``bmc card``."""
    from bmc.train.model_card import render_card

    try:
        print(render_card(args.model_dir))
    except FileNotFoundError as exc:
        raise UsageError(_not_a_model(exc)) from None
    return 0


def soup(args: argparse.Namespace) -> int:
    """``bmc soup``: write the weight average, then calibrate and measure it like ``bmc evaluate --recalibrate``."""
    from bmc.train.folder import evaluate_model_dir
    from bmc.train.soup import SoupError, greedy_members, write_soup

    missing = [str(p) for p in [*args.members, *args.external, *([args.unseen] if args.unseen else [])] if not Path(p).exists()]
    if missing:
        raise UsageError(f"not found: {', '.join(missing)}")
    members, trials = list(args.members), None
    try:
        if args.greedy:
            if args.weights:
                raise SoupError("--greedy chooses the members and averages them equally; leave out --weights")
            members, trials = greedy_members(members)
            for t in trials:
                print(f"{t['member']}: validation macro-F1 {t['validation_macro_f1']:.4f} ({'kept' if t['kept'] else 'left out'})")
            if len(members) < 2:
                print(f"no member raised validation macro-F1 above {members[0]}'s alone: no soup written")
                return 0
        weights = args.weights or [1.0 / len(members)] * len(members)
        folder = write_soup(members, weights, args.out, greedy=trials)
    except SoupError as exc:
        raise UsageError(str(exc)) from exc
    metrics = evaluate_model_dir(folder, args.external, args.unseen, recalibrate=True)
    print(f"validation macro-F1 {metrics['validation']['macro_f1']:.4f}; model folder: {folder}")
    return 0
