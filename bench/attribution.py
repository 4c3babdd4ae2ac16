#!/usr/bin/env python
"""How faithful is each attribution map? Every method of bmc.serve.explain plus two baselines on N cells.

    python bench/attribution.py --model models/bmc-dinov2s-matek-pbc13 \\
        --cells ../shared/data/bone-marrow-cells --n 200 --out bench/attribution-matek.json
    python bench/attribution.py --model DIR --cells ../shared/data/external-wbc/zheng2018-ds2/images \\
        --masks ../shared/data/external-wbc/zheng2018-ds2/masks --out bench/attribution-zheng.json
    python bench/attribution.py --merge part1.json part2.json --out all.json   # shards of one run (--shard I/K)

Baselines: ``random`` (uniform noise per 14-px patch) and ``centre`` (a centred Gaussian of the cell's size,
estimated from the nuclear stain). Measures, per map (docs/explanations.md):

* ``abpc``: area between the insertion and deletion curves of P(predicted class) on the patch grid, removed
  patches filled from their surroundings (bmc.serve.faithfulness), mean over cells with a bootstrap CI;
  ``abpc_vs_centre_ci`` / ``abpc_vs_random_ci``: the CI of the paired difference.
* ``single_patch_spearman``: Spearman between a map's patch sums and the drop of the class logit when only
  that patch is removed (on the first ``--n-patch`` cells).
* ``randomisation_spearman``: Spearman between the map of the trained model and that of the model with its
  head (``head``), then also its top half of blocks (``top_half``) re-initialised (Adebayo et al. 2018).
* with ``--masks`` (255 nucleus, 128 cytoplasm, 0 background): ``mass_on_cell``, ``mass_on_nucleus``
  (share of the positive map) and ``pointing`` (share of cells whose maximum is on the cell).
* ``seconds``: median seconds per map with 2 torch threads.

Matek cells are restricted to the model's own ``--split`` (test by default) through its split manifest;
Occlusion and Integrated Gradients, 50-150 passes per map, are measured on the first ``--n-slow`` cells.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.attribution_summary import _table, summarise  # noqa: E402
from bench.attribution_variants import SLOW, is_slow, method_options, variant_map  # noqa: E402, F401 (re-exported for tests)
from bmc.data import is_pbc_layout, scan_folder, scan_pbc  # noqa: E402
from bmc.images import IMAGE_SUFFIXES  # noqa: E402
from bmc.serve import faithfulness as F  # noqa: E402
from bmc.serve.explain import Explainer, _to_image_size  # noqa: E402
from bmc.serve.vit_maps import vit_layers  # noqa: E402
from bmc.splits import read_resolved_manifest  # noqa: E402

BASELINES = ("random", "centre")
FRACTIONS = (0.0, 0.1, 0.25, 0.5, 1.0)
"""Curve points of the benchmark (fewer than the app's: every point is one pass per map and cell)."""
ZHENG_CLASSES = {"1": "NGS", "2": "LYT", "3": "MON", "4": "EOS", "5": "BAS"}
"""zheng2018-ds2's labels.csv classes as Matek codes (its neutrophils are not split into band and segmented)."""
STAIN_LEVEL = 25.0
"""Blue minus red (0-255, smoothed) above which a pixel counts as nuclear stain: the nucleus proxy of unmasked cells."""


# ---------------------------------------------------------------------------------------------- cells


def list_cells(cells: Path, model: Path, split: str) -> list[tuple[Path, str]]:
    """(image, true code) for every image of ``cells``: class folders (Matek, PBC layouts) or a flat folder
    with zheng2018-ds2's ``labels.csv`` beside it; Matek images restricted to the model's ``split``."""
    files = [p for p in sorted(cells.iterdir()) if p.suffix.lower() in {*IMAGE_SUFFIXES, ".webp"}]
    if files:
        labels: dict[str, str] = {}
        table = cells.parent / "labels.csv"
        if table.is_file():
            for row in csv.DictReader(table.open()):
                labels[f"{int(row['image ID']):03d}"] = ZHENG_CLASSES.get(row["class"].strip(), "")
        return [(p, labels.get(p.stem, "")) for p in files]
    records = (scan_pbc(cells) if is_pbc_layout(cells) else scan_folder(cells))[0]
    manifest = model / "split_manifest.csv"
    if split != "all" and manifest.is_file():
        chosen = {str(Path(r["source"]).resolve()) for r in read_resolved_manifest(manifest) if r["split"] == split}
        listed = [(p, c) for p, c in records if str(Path(p).resolve()) in chosen]
        if listed or any(str(Path(p).resolve()) in _all_sources(manifest) for p, _ in records[:50]):
            records = listed
    return [(Path(p), c) for p, c in records]


def _all_sources(manifest: Path) -> set[str]:
    return {str(Path(r["source"]).resolve()) for r in read_resolved_manifest(manifest)}


def balanced(cells: list[tuple[Path, str]], n: int, seed: int = 0) -> list[tuple[Path, str]]:
    """``n`` cells taken class by class in turn (each class shuffled with ``seed``): every class is represented."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[tuple[Path, str]]] = {}
    for cell in cells:
        by_class.setdefault(cell[1], []).append(cell)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_class.items())]
    out: list[tuple[Path, str]] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


# ---------------------------------------------------------------------------------------------- maps


def centre_prior(rgb: np.ndarray, size: int) -> np.ndarray:
    """A centred Gaussian whose sigma is half the radius of the cell, the cell's radius estimated as 1.6 times
    that of its nuclear stain (never under a tenth of the image side)."""
    stain = _stain(rgb)
    h, w = stain.shape
    radius = max(1.6 * np.sqrt(stain.sum() / np.pi), 0.1 * min(h, w)) * size / min(h, w)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    return np.exp(-(xx**2 + yy**2) / (2 * (radius / 2) ** 2)).astype(np.float32)


def _stain(rgb: np.ndarray) -> np.ndarray:
    smooth = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), 2)
    return (smooth[..., 2] - smooth[..., 0]) > STAIN_LEVEL


def randomised(model: torch.nn.Module, top_half: bool, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` with its head (and, with ``top_half``, its top half of blocks) re-initialised:
    weight matrices drawn N(0, 0.02), biases zeroed, norms and layer scales kept (Adebayo et al.'s cascade)."""
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    modules: list[torch.nn.Module] = [cast(torch.nn.Module, model.classifier)]
    if top_half:
        layers = vit_layers(model)
        modules += list(layers[len(layers) // 2 :])
    with torch.no_grad():
        for module in modules:
            for name, p in module.named_parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.02)
                elif name.endswith("bias"):
                    p.zero_()
    return model.eval()


def curves(ex: Explainer, x: np.ndarray, target: int, scores: dict[str, np.ndarray], seed: int) -> dict[str, float]:
    """ABPC of every map from one batched pass: the image and its full fill are shared by all maps' curves."""
    rng = np.random.default_rng(seed)
    inner = FRACTIONS[1:-1]
    images = [x, F.impute(x, np.ones(x.shape[1:], bool), rng)]
    for s in scores.values():
        order = F.ranked(s, rng)
        images += F.curve_images(x, order, inner, rng, False) + F.curve_images(x, order, inner, rng, True)
    p = F.softmax(F._forward(ex._logits, images), ex.temperature)[:, target]
    out, k = {}, len(inner)
    for i, name in enumerate(scores):
        block = p[2 + 2 * k * i : 2 + 2 * k * (i + 1)]
        deletion = np.r_[p[0], block[:k], p[1]]
        insertion = np.r_[p[1], block[k:], p[0]]
        out[name] = F.abpc(deletion, insertion, FRACTIONS)
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None  # a flat map ranks nothing
    return float(spearmanr(a, b).statistic)


def _where(heat: np.ndarray, mask: np.ndarray | None, stain: np.ndarray) -> dict[str, float | None]:
    """Share of a [0, 1] map (at image size) on the cell, the nucleus and the nuclear stain, and the pointing game."""
    total = float(heat.sum())
    if total <= 0:
        return {"mass_cell": None, "mass_nucleus": None, "pointing": None, "mass_stain": None}
    out: dict[str, float | None] = {"mass_stain": float(heat[stain].sum() / total)}
    if mask is not None:
        peak = np.unravel_index(int(heat.argmax()), heat.shape)
        out |= {
            "mass_cell": float(heat[mask > 0].sum() / total),
            "mass_nucleus": float(heat[mask == 255].sum() / total),
            "pointing": float(mask[peak] > 0),
        }
    return out


def measure_cell(
    ex: Explainer,
    sanity: dict[str, Explainer],
    path: Path,
    code: str,
    masks: Path | None,
    methods: list[str],
    todo: dict[str, bool],
    seed: int,
) -> dict[str, Any]:
    """Every measure of one cell; ``todo`` says which of the costly parts (single patch, sanity, slow methods) run."""
    image = Image.open(path).convert("RGB")
    rgb = np.asarray(image)
    mask = np.asarray(Image.open(masks / f"{path.stem}.png").convert("L")) if masks else None
    stain = _stain(rgb)
    x = ex.pixels(image)
    with torch.inference_mode():
        target = int(ex._logits(x).argmax(-1))
    size, rng = ex.size, np.random.default_rng(seed)
    maps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for spec in methods:
        if is_slow(spec) and not todo["slow"]:
            continue
        start = time.perf_counter()
        maps[spec] = variant_map(ex, x, target, spec)
        seconds[spec] = time.perf_counter() - start
    maps["random"] = rng.random((F.grid_side(size),) * 2).astype(np.float32)
    maps["centre"] = centre_prior(rgb, size)
    scores = {k: F.patch_scores(v, size) for k, v in maps.items()}
    abpc = curves(ex, x[0].numpy(), target, scores, seed)
    drops = F.patch_drops(ex._logits, x[0].numpy(), target, seed=seed) if todo["patch"] else None
    record: dict[str, Any] = {"file": path.name, "true": code, "predicted": cast(Any, ex.model).config.id2label[target], "methods": {}}
    for k, raw in maps.items():
        heat = _to_image_size(raw, image.size)
        row: dict[str, Any] = {"abpc": abpc[k], "seconds": seconds.get(k)} | _where(heat, mask, stain)
        row["single_patch"] = _spearman(scores[k], drops) if drops is not None else None
        if todo["sanity"]:
            row |= _randomised(k, raw, sanity, x, target, size, rng)
        record["methods"][k] = row
    return record


def _randomised(
    spec: str, raw: np.ndarray, sanity: dict[str, Explainer], x: torch.Tensor, target: int, size: int, rng: np.random.Generator
) -> dict[str, float | None]:
    """Spearman (patch grid) between the trained model's map and the randomised models' maps."""
    out: dict[str, float | None] = {}
    trained = F.patch_scores(raw, size)
    for level, rex in sanity.items():
        if spec == "centre":
            other = raw  # a prior ignores the model: identical whatever is randomised
        elif spec == "random":
            other = rng.random(raw.shape)
        else:
            other = variant_map(rex, x, target, spec)
        out[f"rand_{level}"] = _spearman(trained, F.patch_scores(other, size))
    return out


# ---------------------------------------------------------------------------------------------- summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--cells", type=Path, help="images: in class folders (Matek, PBC layouts) or flat (zheng2018-ds2)")
    ap.add_argument("--masks", type=Path, help="one PNG per image, same stem: 255 nucleus, 128 cytoplasm, 0 background")
    ap.add_argument("--n", type=int, default=200, help="cells, taken class by class in turn")
    ap.add_argument("--split", default="test", choices=("test", "validation", "train", "all"), help="of the model's manifest")
    ap.add_argument("--methods", nargs="+", help="registry names, or variants: 'Grad-CAM@-6', 'Attention rollout@keep-sinks'")
    ap.add_argument("--n-slow", type=int, default=20, help=f"cells on which {' and '.join(SLOW)} run")
    ap.add_argument("--n-patch", type=int, default=50, help="cells with the single-patch deletion reference (145 passes each)")
    ap.add_argument("--n-sanity", type=int, default=50, help="cells with the model-randomisation check")
    ap.add_argument("--shard", default="1/1", help="I/K: measure every K-th cell from the I-th (merge the parts with --merge)")
    ap.add_argument("--merge", nargs="+", type=Path, help="JSON files of shards to merge (their per-cell records)")
    ap.add_argument("--resume", action="store_true", help="keep the cells already in --out and measure the rest (runs in pieces)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--grid-limit",
        action="store_true",
        help="with --masks: only the mass on the cell that a perfect one-value-per-patch map could reach (14 and 7 px)",
    )
    ap.add_argument(
        "--card",
        action="store_true",
        help="also write the summary (without per-cell records) to the model folder's attribution.json, the card's table",
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not args.merge and not (args.model and args.cells):
        ap.error("--model and --cells are needed (or --merge)")
    for path in (args.model, args.cells, args.masks):
        if path is not None and not path.is_dir():
            ap.error(f"not a folder: {path}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bmc.model import load_classifier

    torch.set_num_threads(2)
    model, processor = load_classifier(str(args.model))
    ex = Explainer(model, processor)
    sanity = {"head": Explainer(randomised(model, False, args.seed), processor)}
    sanity["top_half"] = Explainer(randomised(model, True, args.seed), processor)
    methods = args.methods or list(ex.methods())
    cells = balanced(list_cells(args.cells, args.model, args.split), args.n, args.seed)
    if not cells:
        raise SystemExit(f"error: no images of split {args.split!r} in {args.cells}")
    i, k = (int(v) for v in args.shard.split("/"))
    records = json.loads(args.out.read_text())["records"] if args.resume and args.out.is_file() else []
    done = {r["file"] for r in records}
    for index in range(i - 1, len(cells), k):
        path, code = cells[index]
        if path.name in done:
            continue
        todo = {"slow": index < args.n_slow, "patch": index < args.n_patch, "sanity": index < args.n_sanity}
        records.append(measure_cell(ex, sanity, path, code, args.masks, methods, todo, args.seed + index))
        _write(args.out, summarise(records) | {"cells": str(args.cells), "partial": True, "records": records})
        print(f"{len(records)}/{len(range(i - 1, len(cells), k))} {path.name}", file=sys.stderr, flush=True)
    return {"cells": str(args.cells), "model": str(args.model), "split": args.split, "records": records}


def grid_limit(masks: Path, size: int) -> dict[str, float]:
    """The mean mass on the cell of the best map a grid allows: each patch's value is the share of it that is cell
    (the expert mask), drawn at image size as every map is. What no map of that grid can exceed, model or not."""
    out: dict[str, list[float]] = {"14px": [], "7px": []}
    for path in sorted(masks.glob("*.png")):
        cell = (np.asarray(Image.open(path).convert("L")) > 0).astype(np.float32)
        for name, side in (("14px", F.grid_side(size)), ("7px", 2 * F.grid_side(size))):
            small = cv2.resize(cell, (side, side), interpolation=cv2.INTER_AREA)
            heat = _to_image_size(small, (cell.shape[1], cell.shape[0]))
            out[name].append(float(heat[cell > 0].sum() / heat.sum()))
    return {k: round(float(np.mean(v)), 4) for k, v in out.items()} | {"n": len(out["14px"])}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.grid_limit:
        if not args.masks or not args.model:
            raise SystemExit("error: --grid-limit needs --model (its input size) and --masks")
        from types import SimpleNamespace

        from bmc.transforms import processor_size

        stored = json.loads((args.model / "preprocessor_config.json").read_text())  # the input side, no model loaded
        limit = grid_limit(args.masks, processor_size(SimpleNamespace(size=stored["size"], crop_size=stored.get("crop_size"))))
        _write(args.out, {"mask_grid_limit": limit, "masks": str(args.masks)})
        print(json.dumps(limit))
        return
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        base = {k: v for k, v in parts[0].items() if k in ("cells", "model", "split")}
        base["records"] = [r for p in parts for r in p["records"]]
    else:
        start = time.time()
        base = run(args)
        base["wall_s"] = round(time.time() - start, 1)
    result = summarise(base["records"]) | base
    _write(args.out, result)
    if args.card:
        from bmc.train.model_card import ATTRIBUTION_FILE, render_card

        folder = Path(result.get("model") or args.model)
        _write(folder / ATTRIBUTION_FILE, {k: v for k, v in result.items() if k != "records"})
        if (folder / "metrics.json").is_file():  # a model folder: its card shows the table at once, not after the next `bmc card`
            render_card(folder)
    print(json.dumps({k: result[k] for k in ("n", "default", "targets")} | {"methods": _table(result)}, indent=1))


def _write(path: Path, result: dict[str, Any]) -> None:
    """The JSON, rewritten after every cell (``partial``: an interrupted run keeps what it measured)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
