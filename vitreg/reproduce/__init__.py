"""`vitreg reproduce`: the paper's tables and figures from one command: trained on the embedded default
(:func:`reproduce`), or measured on a pretrained pair without and with registers (:func:`reproduce_pair`)."""

from vitreg.reproduce.plan import Plan, make_plan
from vitreg.reproduce.pretrained import PairPlan, make_pair_plan
from vitreg.reproduce.run import reproduce, reproduce_pair

__all__ = ["PairPlan", "Plan", "make_pair_plan", "make_plan", "reproduce", "reproduce_pair"]
