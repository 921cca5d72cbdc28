"""Library entry points: every command's work is one call with a typed config and a typed result.

=========================  ===================================  ==========================================
command                    call                                 config -> result
=========================  ===================================  ==========================================
``vitreg diagnose``        :func:`vitreg.jobs.diagnose.diagnose`  DiagnoseConfig -> results.DiagnoseResult
``vitreg probe``           :func:`vitreg.jobs.probe.probe`        ProbeConfig -> results.ProbeResult
``vitreg lost``            :func:`vitreg.jobs.lost.lost`          LostConfig -> results.LostResult
``vitreg flops``           :func:`vitreg.jobs.flops.flops`        FlopsConfig -> results.FlopsResult
``vitreg inspect``         :func:`vitreg.jobs.inspect.inspect`    InspectConfig -> results.InspectResult
``vitreg train``           :func:`vitreg.train.runner.train`      TrainConfig -> list[RunResult]
``vitreg report``          :func:`vitreg.report.html.write_report`  run directory -> report.html
``vitreg reproduce``       :func:`vitreg.reproduce.reproduce`     Plan -> results.reproduce.ReproduceResults
``vitreg lab``             :func:`vitreg.lab.run_lab`             Grid -> results.lab.LabResult
=========================  ===================================  ==========================================

Configs import without torch; the calls import the heavy libraries when they run. The configs are exported here
(loaded on first use); the calls by their module, e.g. ``from vitreg.jobs.diagnose import diagnose``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vitreg._lazy import lazy_exports

if TYPE_CHECKING:
    from vitreg.jobs.diagnose import DiagnoseConfig, ModelEntry
    from vitreg.jobs.flops import FlopsConfig
    from vitreg.jobs.inspect import InspectConfig
    from vitreg.jobs.lost import LostConfig
    from vitreg.jobs.probe import ProbeConfig
    from vitreg.jobs.specs import ImageSpec, ModelSpec, Runtime

_EXPORTS = {
    "DiagnoseConfig": "diagnose",
    "FlopsConfig": "flops",
    "ImageSpec": "specs",
    "InspectConfig": "inspect",
    "LostConfig": "lost",
    "ModelEntry": "diagnose",
    "ModelSpec": "specs",
    "ProbeConfig": "probe",
    "Runtime": "specs",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
