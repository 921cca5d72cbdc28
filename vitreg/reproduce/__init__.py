"""`vitreg reproduce`: the paper's tables and figures from one command (see :func:`reproduce`)."""

from vitreg.reproduce.plan import Plan, make_plan
from vitreg.reproduce.run import reproduce

__all__ = ["Plan", "make_plan", "reproduce"]
