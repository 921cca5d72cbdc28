"""A part of `vitreg reproduce`: one module, one shape. A part names its run directories in one place (a ``*Dirs``
class beside it), gives the stages it needs, and derives its items (the paper's figures and tables, with the claims
they support) from the typed results those stages wrote, and draws its figures from them. The main job runs the
parts' stages together (cached), then collects every part's items under its heading.

Parts, each a class of this shape beside the items it derives, over a module of its stages and run directories:
I (``released_items.ReleasedPart`` over :mod:`vitreg.reproduce.released`: a released model with the artifacts, and
test-time registers), II (``distilled_items.DistilledPart`` over :mod:`vitreg.reproduce.distilled`: registers
distilled into it), III (``collect.LabPart`` over :mod:`vitreg.reproduce.pipeline`: registers trained into a small ViT
from scratch, the artifact lab). A new part is a class of this shape and its stages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from matplotlib.figure import Figure

from vitreg.results.reproduce import Item
from vitreg.stages import Stage

#: a figure to keep under a name in OUT/figures (None: the data did not allow it)
Keep = Callable[[str, Figure | None], None]

#: each part's heading, by key (the report and the terminal summary read them from here)
HEADINGS = {
    "I": "Part I: a released model, and test-time registers",
    "II": "Part II: registers trained into the released model (post hoc, by self-distillation)",
    "III": "Part III: registers trained into a small ViT from scratch (the artifact lab)",
}


class Part(Protocol):
    key: str  # "I", "II", "III": results.json's ``item.part`` and the report's section
    heading: str  # the report's heading and the terminal summary's

    def stages(self) -> list[Stage]:
        """The stages the part needs, in the order they run."""
        ...

    def items(self) -> list[Item]:
        """Its figures and tables with their claims, read from its stages' files (after they ran)."""
        ...

    def figures(self, keep: Keep) -> None:
        """Its figures, drawn from its stages' files only."""
        ...
