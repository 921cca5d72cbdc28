"""The run-directory contract: typed result dataclasses, written and read through :mod:`vitreg.results.rundir`.

Every command's library call returns one of these; report sections, reproduce and the lab read their attributes.
docs/run-directory.md lists every file a run directory holds.
"""

from vitreg.results.codec import SCHEMA_VERSION, from_json, to_json
from vitreg.results.diagnose import DiagnoseResult, ModelResult
from vitreg.results.flops import FlopsResult
from vitreg.results.inspect import InspectResult
from vitreg.results.lost import LostResult
from vitreg.results.probe import ProbeResult
from vitreg.results.rundir import (
    DiagnoseRun,
    ModelRun,
    is_diagnose_run,
    load_run,
    outlier_count,
    read_arrays,
    read_result,
    write_arrays,
    write_result,
)
from vitreg.results.train import TrainingLog, TrainingSummary, read_training_log

__all__ = [
    "SCHEMA_VERSION",
    "DiagnoseResult",
    "DiagnoseRun",
    "FlopsResult",
    "InspectResult",
    "LostResult",
    "ModelResult",
    "ModelRun",
    "ProbeResult",
    "TrainingLog",
    "TrainingSummary",
    "from_json",
    "is_diagnose_run",
    "load_run",
    "outlier_count",
    "read_arrays",
    "read_result",
    "read_training_log",
    "to_json",
    "write_arrays",
    "write_result",
]
