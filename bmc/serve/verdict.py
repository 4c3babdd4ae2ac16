"""The One cell verdict in words: whether to trust the answer comes first, then the class.

A flagged answer (calibrated confidence below the model's review threshold) leads with "review manually" and names
the class only as a best guess, never in bold, so it cannot be read as a confident one at a glance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bmc.labels import CELL_CLASSES, display_name
from bmc.serve.predictor import Prediction


def one_cell_verdict(
    pred: Prediction, threshold: float, n_codes: int, secondary_only: Mapping[str, Sequence[str]], converted: str | None = None
) -> str:
    """The verdict (Markdown) on one cell: confident or review manually with the calibrated %, then the class; notes
    on a class learnt from blood only and on an upload converted to 8-bit RGB (``converted``: what it was)."""
    name = display_name(pred.top_code)
    if pred.flagged:
        verdict = (
            f"⚠️ **Uncertain — review manually:** {pred.confidence:.1%} calibrated confidence, below the review "
            f"threshold of {threshold:.1%}. Best guess: {name}. The cell may be of a type this model was not "
            f"trained on ({len(CELL_CLASSES) - n_codes} of the 21 Matek classes are unknown to it)."
        )
    else:
        verdict = (
            f"✅ **Confident: {name}** at {pred.confidence:.1%} calibrated confidence (review threshold "
            f"{threshold:.1%}). A suggestion for review, not a diagnosis."
        )
    if pred.top_code in secondary_only:
        verdict += (
            f"\n\nNote: this model learnt {name} only from images of {', '.join(secondary_only[pred.top_code])} "
            "(peripheral blood), not marrow; on marrow cells of these classes it is unreliable (see the model card)."
        )
    if converted:
        verdict += f"\n\nNote: the upload was {converted}; it was converted to 8-bit RGB, the kind of image the model was trained on."
    return verdict
