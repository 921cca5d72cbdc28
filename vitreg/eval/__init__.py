"""Evaluations on frozen features: token probes, linear and dense probes, LOST object discovery with CorLoc.

Every evaluator takes a model (or captured tokens) and options and returns a plain JSON-serialisable dict.
"""
