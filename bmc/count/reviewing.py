"""The review of a count: each cell's current label and where it comes from, the review queue, review decisions
(seen or corrections only), the learning review they drive (:mod:`bmc.count.learning`) and undo.

A mixin of :class:`bmc.count.differential.CountReport`, which holds the fields named below; kept apart so the count's
figures and its review each fit one module.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import Field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from bmc.count.learning import SOURCE_LEARNT, SOURCE_MODEL, SOURCE_REVIEWED, SOURCES, relabel

if TYPE_CHECKING:
    from bmc.count.differential import Cell

MAX_LISTED = 10
"""Names listed in one line of a message (the rest counted)."""


class Reviewing:
    """Review state and decisions of a count (the fields are :class:`bmc.count.differential.CountReport`'s)."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # a dataclass's mixin: replace() works on self
    codes: list[str]
    cells: list[Cell]
    corrections: dict[str, str]
    threshold: float
    temperature: float
    validation_flagged: float | None
    learn: bool
    learnt: dict[str, tuple[str, float]]
    learning_note: str
    corrected_only: frozenset[str]
    offered: str | None
    passed_over: frozenset[str]
    previous: Self | None

    @cached_property
    def _by_name(self) -> dict[str, Cell]:
        return {c.name: c for c in self.cells}

    def cell(self, name: str) -> Cell | None:
        """The counted image of that name (names are unique within a count); a dict lookup, as the review
        queue and the gallery look up every cell of a count on each render."""
        return self._by_name.get(name)

    def label(self, cell: Cell) -> str:
        """A cell's label now: the reviewer's, else the one learnt from this review, else the model's."""
        if cell.name in self.corrections:
            return self.corrections[cell.name]
        return self.learnt[cell.name][0] if cell.name in self.learnt else cell.prediction.top_code

    def source(self, cell: Cell) -> str:
        """Where a cell's label comes from: one of :data:`bmc.count.learning.SOURCES`."""
        if cell.name in self.corrections:
            return SOURCE_REVIEWED
        return SOURCE_LEARNT if cell.name in self.learnt else SOURCE_MODEL

    def confidence(self, cell: Cell) -> float:
        """How sure the current label is (1 for a reviewed cell): the review queue's order."""
        if cell.name in self.corrections:
            return 1.0
        return self.learnt[cell.name][1] if cell.name in self.learnt else cell.prediction.confidence

    def review_queue(self) -> list[str]:
        """Unreviewed cells, least confident under the current labels first, then the reviewed ones."""
        open_ = sorted((c for c in self.cells if c.name not in self.corrections), key=self.confidence)
        return [c.name for c in open_] + [c.name for c in self.cells if c.name in self.corrections]

    def check_review(self, corrections: dict[str, str]) -> None:
        """Raise ValueError, in one line, if a review names a class the model lacks or an image not in this count."""
        unknown = sorted(set(corrections.values()) - set(self.codes))
        if unknown:
            raise ValueError(
                f"labels {unknown} are not classes of this model ({', '.join(self.codes)}); a class the model "
                "lacks can be added with bmc adapt"
            )
        missing = [n for n in corrections if n not in self._by_name]
        if missing:
            listed = ", ".join(missing[:MAX_LISTED]) + (f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else "")
            if len(missing) == len(corrections):
                raise ValueError(
                    f"none of the {len(corrections)} reviewed image(s) is in this count (a review for another count?), "
                    f"so none was applied: {listed}"
                )
            raise ValueError(f"{len(missing)} of the {len(corrections)} reviewed images are not in this count, none applied: {listed}")

    def reviewed(self, corrections: dict[str, str], seen: bool | Collection[str] = True) -> Self:
        """The same count with more review decisions (image name → code; the model's code confirms), and the
        unreviewed cells re-labelled by what the seen ones teach (:meth:`relearn`). ``seen``: whether the reviewer
        saw these cells (opened and confirmed or relabelled; the app's reviews), or which of them; the others are
        corrections only. A cell the app offered and the reviewer passed over for another is noted
        (:attr:`passed_over`). The count before is kept for :meth:`undo`."""
        self.check_review(corrections)
        seen_now = set(corrections) if seen is True else set() if seen is False else set(seen)
        passed = set(self.passed_over) - set(corrections)
        if self.offered and self.offered not in corrections and self.offered not in self.corrections:
            passed.add(self.offered)
        return replace(
            self,
            corrections={**self.corrections, **corrections},
            corrected_only=frozenset((self.corrected_only - seen_now) | (set(corrections) - seen_now)),
            passed_over=frozenset(passed),
            offered=None,
            previous=replace(self, previous=None),
        ).relearn()

    def offering(self, name: str | None) -> Self:
        """The same count, noting the cell the app opened for review next."""
        return replace(self, offered=name if name and name not in self.corrections else None)

    def undo(self) -> Self | None:
        """The count before the last review (None if there is none to undo)."""
        return self.previous

    @property
    def last_review_changes(self) -> tuple[int, int] | None:
        """Labels the last review changed: (reviewed cells, unreviewed cells re-labelled); None before any review."""
        if self.previous is None:
            return None
        before = self.previous
        changed = [c for c in self.cells if self.label(c) != before.label(c)]
        mine = sum(c.name in self.corrections and c.name not in before.corrections for c in changed)
        return mine, len(changed) - mine

    def relearn(self) -> Self:
        """Refit the learning review on the reviewed cells and re-label the others (model labels if off,
        or if the cells carry no logits and embeddings, e.g. a count read back from a CSV)."""
        usable = self.learn and all(c.prediction.logits is not None and c.prediction.embedding is not None for c in self.cells)
        if not usable:
            note = "learning is off: the model's labels stand" if not self.learn else self.learning_note
            return replace(self, learnt={}, learning_note=note)
        if self.passed_over:
            names = ", ".join(sorted(self.passed_over)[:MAX_LISTED])
            return replace(
                self,
                learnt={},
                learning_note=f"learning paused: {len(self.passed_over)} cell(s) the queue opened were left without a decision "
                f"({names}), so the reviewed cells may be only the wrong ones; confirm or relabel them to learn again",
            )
        model_codes = list(self.cells[0].prediction.probs)  # the model's own class order (logits' columns)
        index = {c.name: i for i, c in enumerate(self.cells)}
        logits = [c.prediction.logits for c in self.cells if c.prediction.logits is not None]
        embeddings = [c.prediction.embedding for c in self.cells if c.prediction.embedding is not None]
        state = relabel(
            np.stack(logits),
            np.stack(embeddings),
            {index[n]: model_codes.index(code) for n, code in self.corrections.items()},
            self.temperature,
            self.threshold,
            self.validation_flagged,
            seen={index[n] for n in self.corrections if n not in self.corrected_only},
        )
        learnt = {
            c.name: (model_codes[state.labels[i]], float(state.confidence[i]))
            for i, c in enumerate(self.cells)
            if state.source[i] == SOURCE_LEARNT
        }
        return replace(self, learnt=learnt, learning_note=state.reason)

    @property
    def n_reviewed(self) -> int:
        return len(self.corrections)

    @property
    def n_changed(self) -> int:
        return sum(1 for c in self.cells if c.name in self.corrections and self.corrections[c.name] != c.prediction.top_code)

    @property
    def n_learnt_changed(self) -> int:
        """Unreviewed cells whose learnt label differs from the model's."""
        return sum(1 for c in self.cells if c.name in self.learnt and self.learnt[c.name][0] != c.prediction.top_code)

    @property
    def source_counts(self) -> dict[str, int]:
        """How many cells have their label from each source."""
        out = dict.fromkeys(SOURCES, 0)
        for c in self.cells:
            out[self.source(c)] += 1
        return out

    @property
    def sources_text(self) -> str:
        """Where the labels come from, what the learning review decided and what the last review changed."""
        n = self.source_counts
        text = (
            f"Labels: {n[SOURCE_MODEL]} from the model, {n[SOURCE_LEARNT]} learnt from this review "
            f"({self.n_learnt_changed} of them changed), {n[SOURCE_REVIEWED]} reviewed; {self.learning_note}."
        )
        if k := len(self.corrected_only):
            text += f" {k} reviewed cell(s) are corrections only (not cells seen): their labels stand but teach nothing."
        if (changes := self.last_review_changes) is not None:
            text += f" The last review changed {sum(changes)} label(s): {changes[0]} reviewed, {changes[1]} re-labelled by learning."
        return text
