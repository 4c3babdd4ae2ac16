"""Summaries of ``bench/attribution.py``'s per-cell records: means with bootstrap intervals, paired differences
against the baselines, the issue's targets met or not, and a one-line table per method."""

from __future__ import annotations

from typing import Any

import numpy as np

from bmc.serve.explain import DEFAULT_METHOD

BOOT = 2000
"""Bootstrap resamples of every interval."""


def _values(records: list[dict], method: str, key: str) -> np.ndarray:
    vals = [r["methods"][method].get(key) for r in records if method in r["methods"]]
    return np.array([v for v in vals if v is not None], dtype=np.float64)


def _mean(values: np.ndarray) -> float | None:
    return round(float(values.mean()), 4) if values.size else None


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> list[float] | None:
    """95 % percentile interval of the mean over ``BOOT`` resamples of the cells."""
    if values.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (BOOT, values.size))].mean(1)
    return [round(float(v), 4) for v in np.percentile(means, [2.5, 97.5])]


def _paired(records: list[dict], method: str, other: str, key: str) -> list[float] | None:
    """CI of the mean paired difference ``method - other`` over the cells that have both."""
    pairs = [
        (r["methods"][method].get(key), r["methods"][other].get(key)) for r in records if method in r["methods"] and other in r["methods"]
    ]
    diffs = np.array([a - b for a, b in pairs if a is not None and b is not None], dtype=np.float64)
    return bootstrap_ci(diffs)


def summarise(records: list[dict], default: str = DEFAULT_METHOD) -> dict[str, Any]:
    """The JSON of the issue: per method the means (with CIs) over the cells that measured them, per class for
    the default method, and whether the default meets the targets."""
    names = list(dict.fromkeys(k for r in records for k in r["methods"]))
    methods: dict[str, Any] = {}
    for m in names:
        abpc, sp = _values(records, m, "abpc"), _values(records, m, "single_patch")
        secs = _values(records, m, "seconds")
        methods[m] = {
            "n": int(abpc.size),
            "abpc": _mean(abpc),
            "abpc_ci": bootstrap_ci(abpc),
            "abpc_vs_centre_ci": _paired(records, m, "centre", "abpc") if m != "centre" else None,
            "abpc_vs_random_ci": _paired(records, m, "random", "abpc") if m != "random" else None,
            "single_patch_spearman": _mean(sp),
            "single_patch_ci": bootstrap_ci(sp),
            "single_patch_n": int(sp.size),
            "single_patch_vs_centre_ci": _paired(records, m, "centre", "single_patch") if m != "centre" else None,
            "single_patch_vs_random_ci": _paired(records, m, "random", "single_patch") if m != "random" else None,
            "randomisation_spearman": {
                "head": _mean(_values(records, m, "rand_head")),
                "top_half": _mean(_values(records, m, "rand_top_half")),
                "n": int(_values(records, m, "rand_top_half").size),
            },
            "mass_on_cell": _mean(_values(records, m, "mass_cell")),
            "mass_on_nucleus": _mean(_values(records, m, "mass_nucleus")),
            "mass_on_stain": _mean(_values(records, m, "mass_stain")),
            "pointing": _mean(_values(records, m, "pointing")),
            "seconds": round(float(np.median(secs)), 3) if secs.size else None,
        }
    per_class: dict[str, Any] = {}
    for code in sorted({r["true"] for r in records}):
        rows = [r for r in records if r["true"] == code]
        per_class[code or "?"] = {
            "n": len(rows),
            "mass_on_nucleus": _mean(_values(rows, default, "mass_nucleus")),
            "mass_on_stain": _mean(_values(rows, default, "mass_stain")),
            "mass_on_cell": _mean(_values(rows, default, "mass_cell")),
        }
    return {"n": len(records), "default": default, "methods": methods, "per_class": per_class, "targets": targets(methods.get(default))}


def targets(d: dict[str, Any] | None) -> dict[str, bool | None]:
    """The issue's bar for the default method: each None where this run did not measure it."""
    if not d:
        return {}

    def clear(ci: list[float] | None) -> bool | None:
        return None if ci is None else ci[0] > 0

    top = d["randomisation_spearman"]["top_half"]
    return {
        "sanity_top_half_le_0.2": None if top is None else top <= 0.2,
        "abpc_beats_centre": clear(d["abpc_vs_centre_ci"]),
        "abpc_beats_random": clear(d["abpc_vs_random_ci"]),
        "single_patch_beats_centre": clear(d["single_patch_vs_centre_ci"]),
        "single_patch_beats_random": clear(d["single_patch_vs_random_ci"]),
        "mass_on_cell_ge_0.85": None if d["mass_on_cell"] is None else d["mass_on_cell"] >= 0.85,
        "pointing_ge_0.95": None if d["pointing"] is None else d["pointing"] >= 0.95,
        "seconds_le_1": None if d["seconds"] is None else d["seconds"] <= 1.0,
    }


# ---------------------------------------------------------------------------------------------- main


def _table(result: dict[str, Any]) -> dict[str, str]:
    out = {}
    for m, d in result["methods"].items():
        r = d["randomisation_spearman"]
        out[m] = (
            f"abpc {d['abpc']} {d['abpc_ci']} sp {d['single_patch_spearman']} rand {r['head']}/{r['top_half']} "
            f"cell {d['mass_on_cell']} nuc {d['mass_on_nucleus']} point {d['pointing']} s {d['seconds']}"
        )
    return out
