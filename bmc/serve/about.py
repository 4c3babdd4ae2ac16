"""What the app says first: what the tool does and for whom, and the model's details folded under "About this model".

A haematologist opening the page needs the task and the limits, not a checksum; the model's name, version, backend,
classes and the classes it learnt from blood only stay one click away.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bmc.constants import DISCLAIMER
from bmc.labels import display_name, sort_codes
from bmc.model_folder import unseen_marrow_score

HEADER = (
    "# Bone marrow cell classifier\n"
    "For haematologists and cytology labs: classify single white or nucleated cells from May-Grünwald-Giemsa "
    "marrow or blood smears (**One cell**, with *Why* showing where the model looked), or count a differential "
    "from many cell images or whole microscope fields, reviewing the cells the model is unsure of "
    "(**Differential count**). **Research tool, not for diagnosis**: every count must be reviewed by a haematologist."
)


def about_model(name: str, version: str, backend: str, codes: Sequence[str], secondary_only: Mapping[str, Sequence[str]]) -> str:
    """The "About this model" fold (Markdown): the model, its classes, and the classes learnt from blood only with
    the card's check of them on marrow."""
    model = Path(name).name if Path(name).is_dir() else name
    text = (
        f"{DISCLAIMER}\n\nModel `{model}` ({version}, {backend}). It knows {len(codes)} classes: "
        + ", ".join(display_name(c) for c in sort_codes(codes))
        + "."
    )
    if secondary_only:
        score = unseen_marrow_score(name, list(secondary_only))
        checked = f": of {score[1]} marrow images of them the model card checks, it names {score[0]} right" if score else ""
        text += (
            "\n\n**Learnt from peripheral-blood images only:** "
            + ", ".join(display_name(c) for c in sort_codes(secondary_only))
            + f". On marrow cells of these types the model is unreliable{checked}; treat such labels with extra care."
        )
    return text
