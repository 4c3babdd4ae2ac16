"""Figures and tables of ``bench/review.py``'s results: the contact sheet of the cells still wrong, the review
curves of several runs in one figure, and their figures as a markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def gallery(out: Path, images: list, wrong: list[dict[str, Any]], columns: int = 10, side: int = 128) -> Path:
    """A contact sheet of the cells in ``wrong`` (from :func:`simulate_adaptive`), each captioned with its true
    class and the label the count gives it: what a reader needs to judge the errors that are left."""
    from PIL import Image, ImageDraw

    rows = max(1, -(-len(wrong) // columns))
    sheet = Image.new("RGB", (columns * side, rows * (side + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, cell in enumerate(wrong):
        x, y = (k % columns) * side, (k // columns) * (side + 14)
        sheet.paste(images[cell["index"]].convert("RGB").resize((side, side)), (x, y))
        draw.text((x + 2, y + side), f"{cell['truth']} -> {cell['label']} {cell['confidence']:.2f}", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


COLOURS = {"queue": "tab:blue", "corrections-only": "tab:red", "random": "tab:green", "by-class": "tab:purple"}


def plot(out: Path, results: list[Path]) -> Path:
    """Plain (dashed) and learning (solid) curves of each result file, one panel per set, one colour per reviewer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(path, json.loads(path.read_text())) for path in results]
    sets = list(dict.fromkeys((r["cells"], r.get("split"), r.get("domain")) for _, r in runs))
    fig, axes = plt.subplots(1, len(sets), figsize=(4.6 * len(sets), 3.9), squeeze=False)
    for ax, key in zip(axes[0], sets):
        mine = [(p, r) for p, r in runs if (r["cells"], r.get("split"), r.get("domain")) == key]
        for _, r in mine:
            who = r.get("reviewer", "queue")
            for kind, style in (("static", "--"), ("adaptive", "-")):
                levels = sorted(r[kind], key=int)
                review = "plain review" if kind == "static" else "learning review"
                label = f"{who}: {review}" if len(mine) > 1 else review
                ax.plot(
                    [int(k) for k in levels], [100 * r[kind][k] for k in levels], style, marker=".", color=COLOURS.get(who), label=label
                )
        ax.axhline(95, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{mine[0][0].stem.split('.')[0]} ({mine[0][1]['n']} cells)")
        ax.set_xlabel("% of cells gone through")
        ax.set_ylabel("% of the count right")
        ax.set_ylim(30, 100)
        ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def table(results: list[Path], levels: tuple[int, ...]) -> str:
    """A markdown table of result files: per set and reviewer, plain and learning review at each level."""
    lines = ["| set (cells) | reviewer | review | " + " | ".join(f"{p} %" for p in levels) + " | reviews to 95 % |"]
    lines.append("|---" * (4 + len(levels)) + "|")
    for path in results:
        r = json.loads(path.read_text())
        who = r.get("reviewer", "queue") + (" (as seen)" if r.get("corrections_as_seen") else "")
        for kind, name in (("static", "plain"), ("adaptive", "learning")):
            cells = " | ".join(f"{100 * r[kind][str(p)]:.1f} %" for p in levels)
            to_95 = r["reviews_to_95"][kind]
            lines.append(f"| {path.stem} ({r['n']}) | {who} | {name} | {cells} | {'> 30 %' if to_95 is None else to_95} |")
    return "\n".join(lines)
