"""Every argument of ``train_hf.py`` that is bmc's own, as dataclasses ``HfArgumentParser`` reads (as in
transformers' ``run_image_classification.py``): data, model and loss, the exported folder, publishing.

Each checks what it can in ``__post_init__``, before any data or weights are loaded, so a mistake costs one
line and no minutes. ``docs/training.md``'s option list is generated from these (``python -m bmc options``).
"""

from __future__ import annotations

import json
import logging
import sys
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Literal

from bmc.constants import OPTIONAL_AUGMENTATIONS, ROBUSTNESS_AUGMENTATIONS

log = logging.getLogger(__name__)


@dataclass
class DataArguments:
    """Where the images come from and how they are split (names follow run_image_classification.py)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id (needs network), e.g. ekim15/bone_marrow_cell_dataset"}
    )
    train_dir: list[str] | None = field(
        default=None,
        metadata={
            "help": "Local folder(s): imagefolder, Kaggle layout, PBC layout or parquet "
            "files; several (space- or comma-separated) are pooled, each as its own domain"
        },
    )
    validation_dir: str | None = field(default=None, metadata={"help": "Separate validation folder (else carved from train_dir)"})
    train_val_split: float = field(default=0.15, metadata={"help": "Fraction of each class used for validation"})
    test_split: float = field(default=0.15, metadata={"help": "Fraction of each class held out for the final test"})
    split_mode: Literal["block", "random"] = field(
        default="block", metadata={"help": "'block' (whole runs of image numbers per split: no same-slide leakage) or 'random'"}
    )
    split_block_size: int = field(default=50, metadata={"help": "Consecutive image numbers per block in block mode"})
    split_seed: int = field(
        default=42,
        metadata={
            "help": "Seed of the train/validation/test assignment; kept apart from --seed so "
            "that a run with another training seed keeps the same held-out images"
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training split (debugging, quick tests)"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate validation and test splits"})
    image_column_name: str = field(default="image", metadata={"help": "Image column of a Hub/parquet dataset"})
    label_column_name: str = field(default="label", metadata={"help": "Label column of a Hub/parquet dataset"})
    dataset_revision: str | None = field(
        default=None, metadata={"help": "Branch, tag or commit of the Hub dataset (a commit makes the run repeatable)"}
    )
    external_dir: list[str] | None = field(
        default=None,
        metadata={
            "help": "Other laboratories' folders (PBC layout or class folders "
            "such as BCCD) evaluated as out-of-domain data, never trained on"
        },
    )
    unseen_dir: str | None = field(
        default=None,
        metadata={"help": "Marrow images of types the training marrow data lacks (<CODE>_n.jpg): reported one by one in the card"},
    )

    def __post_init__(self) -> None:
        """Checks that need no data, so a mistake is reported before anything is loaded."""
        # several folders: "a,b" and "a b" alike
        self.train_dir = split_list(self.train_dir)
        self.external_dir = split_list(self.external_dir)
        if not self.dataset_name and not self.train_dir:
            raise ValueError("give --train_dir (a local folder) or --dataset_name (a Hub dataset id)")
        for name in ("train_val_split", "test_split"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a fraction in [0, 1), not {getattr(self, name)}")
        if self.train_val_split + self.test_split >= 1:
            raise ValueError("--train_val_split and --test_split leave no training images (their sum must be below 1)")
        if self.split_block_size < 1:
            raise ValueError("--split_block_size must be at least 1")


def split_list(values: list[str] | str | None) -> list[str] | None:
    if not values:
        return None
    values = [values] if isinstance(values, str) else values
    return [part for item in values for part in str(item).split(",") if part]


@dataclass
class ModelArguments:
    """Which backbone, at which input size, with which loss."""

    model_name_or_path: str = field(default="facebook/dinov2-small", metadata={"help": "Hub id or local folder (safetensors)"})
    ignore_mismatched_sizes: bool = field(default=False, metadata={"help": "Re-head a classifier trained on other classes"})
    image_size: int = field(default=112, metadata={"help": "Square input side in pixels (DINOv2: a multiple of 14)"})
    denoise: bool = field(default=False, metadata={"help": "OpenCV non-local-means denoising before the model"})
    colour_standardise: Literal["none", "reinhard", "anchored"] = field(
        default="none",
        metadata={
            "help": "Map each image's colours onto the marrow training images' average, in training and (stored in "
            "preprocessor_config.json) at inference: `reinhard`, its CIE-Lab mean and spread; `anchored`, its chromatin "
            "and slide colours (darkest 3 %, lightest 10 % of pixels: independent of how much of the frame the cell fills)"
        },
    )
    augment: list[str] = field(
        default_factory=lambda: list(ROBUSTNESS_AUGMENTATIONS),
        metadata={
            "help": "Train-time changes aimed at other labs' images, any of "
            f"{', '.join(ROBUSTNESS_AUGMENTATIONS + OPTIONAL_AUGMENTATIONS)} (comma list), or 'none'; leaving one out measures "
            f"what it does (default: {', '.join(ROBUSTNESS_AUGMENTATIONS)})"
        },
    )
    loss: Literal["ce", "weighted_ce", "focal"] = field(
        default="weighted_ce", metadata={"help": "'ce', 'weighted_ce' (weights from --balance) or 'focal'"}
    )
    balance: Literal["class", "domain_class"] = field(
        default="domain_class",
        metadata={
            "help": "Loss weights: 'class' (inverse class frequency over the pooled data) or 'domain_class' (classes weigh the same "
            "within each training source)"
        },
    )
    domain_weighting: Literal["equal", "size"] = field(
        default="equal",
        metadata={
            "help": "With --balance domain_class: 'equal' (every source the same total weight) or 'size' (in proportion to its images)"
        },
    )
    focal_gamma: float = field(default=2.0, metadata={"help": "Focusing parameter of the focal loss"})
    head_lr_multiplier: float = field(
        default=10.0, metadata={"help": "Learning rate of the new classification head relative to the backbone"}
    )
    layer_lr_decay: float = field(default=0.75, metadata={"help": "Layer-wise learning-rate decay for transformer blocks (1: flat)"})
    drop_path_rate: float | None = field(default=0.1, metadata={"help": "Stochastic depth for ViT backbones"})
    model_revision: str = field(
        default="main", metadata={"help": "Branch, tag or commit of a Hub model (as in run_image_classification.py)"}
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Also load a base model that has only pytorch_model.bin (torch's weights-only unpickler); safetensors only by default"
        },
    )
    early_stopping_patience: int = field(default=3, metadata={"help": "Evaluations without macro-F1 gain before stopping (0: off)"})
    review_target_accuracy: float = field(
        default=0.95, metadata={"help": "Accuracy the unflagged cells must reach at the 95% lower confidence bound on validation"}
    )
    distill_from: str | None = field(
        default=None,
        metadata={
            "help": "A bmc model folder (e.g. a marrow-only model) whose softened predictions the run also learns on the training "
            "images that model trained on (learning without forgetting); its classes must be among the run's"
        },
    )
    distill_weight: float = field(default=0.5, metadata={"help": "Weight of the distillation term beside the loss on the labels"})
    distill_temperature: float = field(default=2.0, metadata={"help": "Softening temperature of teacher and student in distillation"})
    colour_consistency: float = field(
        default=0.0,
        metadata={
            "help": "Weight of a colour-consistency term: each training image is also seen in a random lab's colours "
            "(same crop and geometry) and its prediction pulled towards the image's own (KL divergence); 0 = off"
        },
    )
    mixstyle_blocks: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Transformer blocks (0-based) after which MixStyle swaps part of the per-channel feature statistics "
            "between the images of a training batch (bmc.train.mixstyle; training only, the saved model is unchanged); "
            "empty = off"
        },
    )
    mixstyle_p: float = field(default=0.5, metadata={"help": "Share of training batches MixStyle mixes at each chosen block"})

    def __post_init__(self) -> None:
        """Checks that need no data or weights (only the base model's config.json, when it is a local folder)."""
        patch = patch_size(self.model_name_or_path)
        if self.image_size < 28:
            raise ValueError(f"--image_size {self.image_size} is too small for a cell image (at least 28 px)")
        if patch and self.image_size % patch:
            rounded = max(patch, round(self.image_size / patch) * patch)
            log.warning(
                "--image_size %d is not a multiple of the model's %d-px patches; using %d (the last partial patch would be cut off)",
                self.image_size,
                patch,
                rounded,
            )
            self.image_size = rounded
        if not 0 < self.review_target_accuracy <= 1:
            raise ValueError(f"--review_target_accuracy must be in (0, 1], not {self.review_target_accuracy}")
        if self.distill_weight < 0 or self.distill_temperature <= 0:
            raise ValueError("--distill_weight must be >= 0 and --distill_temperature > 0")
        if not 0 <= self.mixstyle_p <= 1:
            raise ValueError(f"--mixstyle_p {self.mixstyle_p}: a share, must be in [0, 1]")
        if self.colour_consistency < 0:
            raise ValueError(f"--colour_consistency {self.colour_consistency}: a weight, must be >= 0")
        augment = split_list(self.augment) or []
        self.augment = [] if augment == ["none"] else augment
        if isinstance(self.colour_standardise, bool):  # configs of 2026-12-03 wrote true/false
            self.colour_standardise = "reinhard" if self.colour_standardise else "none"
        known = ROBUSTNESS_AUGMENTATIONS + OPTIONAL_AUGMENTATIONS
        unknown = sorted(set(self.augment) - set(known))
        if unknown:
            raise ValueError(f"--augment {','.join(unknown)}: unknown; choose from {', '.join(known)} or 'none'")


def patch_size(name_or_path: str) -> int | None:
    """The ViT patch size of a base model, from a local config.json, or 14 for a DINOv2 Hub id."""
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("patch_size")
    return 14 if "dinov2" in name_or_path.lower() else None


@dataclass
class ExportArguments:
    """Where and how the finished model folder is written (the folder that is also published)."""

    export_dir: str | None = field(default=None, metadata={"help": "Where the final model, card and figures go (default: output_dir)"})
    fp16_weights: bool = field(default=True, metadata={"help": "Store final weights as float16 (they load as float32)"})
    model_name: str | None = field(default=None, metadata={"help": "Name used in the model card (default: export folder name)"})
    code_url: str | None = field(default=None, metadata={"help": "Where the card says the training code lives (bmc's repository or Space)"})


@dataclass
class HubArguments:
    """Publishing options beyond TrainingArguments' ``--push_to_hub``/``--hub_model_id``/``--hub_token``."""

    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repository as private"})


ARGUMENT_GROUPS = {
    "Data": DataArguments,
    "Model and loss": ModelArguments,
    "Exported folder": ExportArguments,
    "Publishing": HubArguments,
}
"""bmc's own ``train_hf.py`` arguments by group, in the order ``docs/training.md`` lists them."""
OPTIONS_START, OPTIONS_END = "<!-- options:start -->", "<!-- options:end -->"
"""The markers around the generated option list in ``docs/training.md``."""


def options_markdown() -> str:
    """The option list of ``docs/training.md``: every field of :data:`ARGUMENT_GROUPS` with its default, its choices
    and its help, generated so that the page cannot drift from the code (a test compares them)."""
    out = []
    for title, cls in ARGUMENT_GROUPS.items():
        out += [f"**{title}** (`{cls.__name__}`)", "", "| option | default | what it does |", "|---|---|---|"]
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            default = f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]
            listed = ",".join(str(v) for v in default) if isinstance(default, list) else default
            shown = "—" if default is None or listed == "" else f"`{listed}`"
            choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
            help_text = f.metadata.get("help", "").replace("|", "\\|")
            if choices:
                help_text += f" (one of {', '.join(f'`{c}`' for c in choices)})"
            out.append(f"| `--{f.name}` | {shown} | {help_text} |")
        out.append("")
    out.append("Every option of transformers' `TrainingArguments` is accepted too (`train_hf.py --help` lists them all).")
    return "\n".join(out)


def write_options(doc: Path) -> bool:
    """Put :func:`options_markdown` between the markers of ``doc``; True when the file changed."""
    text = doc.read_text()
    head, rest = text.split(OPTIONS_START, 1)
    _, tail = rest.split(OPTIONS_END, 1)
    new = f"{head}{OPTIONS_START}\n{options_markdown()}\n{OPTIONS_END}{tail}"
    if new != text:
        doc.write_text(new)
    return new != text


if __name__ == "__main__":  # python -m bmc.train.arguments docs/training.md: regenerate the option list
    print("updated" if write_options(Path(sys.argv[1])) else "up to date")
