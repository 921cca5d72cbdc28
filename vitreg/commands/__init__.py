"""CLI commands, one module each (``add_arguments(parser)`` and ``run(args)``), named here with their one-line help
so that listing them imports nothing. A command module imports only light modules at the top: it turns arguments
into a job config and calls the library (vitreg.jobs), which imports torch when it runs."""

COMMANDS: dict[str, str] = {
    "models": "list model presets with their sizes, and the model zoo",
    "zoo": "check the model zoo's files, or add a finished training run to it",
    "inspect": "norm summary of a model's tokens over images, layer by layer",
    "diagnose": "find, measure and show high-norm artifact tokens of a model over images",
    "report": "re-render DIR/figures and DIR/report.html from a run directory's saved results",
    "train": "train ViTs with 0-16 registers, tracking token norms; resumable; torchrun for several processes",
    "probe": "position/pixel/global token probes and linear classification/dense probes",
    "fix": "test-time registers: find the register neurons and move the artifacts out of the patches, no retraining",
    "lost": "unsupervised object discovery with LOST, scored with CorLoc",
    "export": "write a model (a fixed one included) as a timm folder or an ONNX graph, checked against vitreg",
    "flops": "FLOP and parameter overhead of registers, per resolution",
    "reproduce": "the paper's tables and figures on the embedded default (train, diagnose, probe, LOST, FLOPs, report)",
    "demo": "same as `vitreg reproduce` (the main job on the embedded default)",
    "lab": "artifact lab: which training setting grows high-norm artifacts? (a grid of trainings, diagnosed)",
}
