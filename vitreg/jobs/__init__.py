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

Configs import without torch; the calls import the heavy libraries when they run. Import both from the job's
module, e.g. ``from vitreg.jobs.diagnose import DiagnoseConfig, diagnose``.
"""
