"""Which weights must a distillation unlock, and which teacher? The table of docs/distill.md, from distillation run
directories (``vitreg fix --method distill ... --out DIR``): per run, the unlocked set and the teacher, the numbers
trained, the held-out outliers (last block and worst block, above the original's threshold) and bimodality, the final
[CLS] cosine to the original, the registers' norm, and the minutes spent (teacher targets, training), with the CPU
or GPU each ran on. Every number is read from the runs' distill.json; nothing is typed in.

``--run`` first distils each ``SET:TEACHER`` into OUT/t-SET-TEACHER with the same images, held-out images, steps and
neurons (minutes to hours at ViT-B on a CPU), then prints the table; without it, the table of the run directories
given.

    python bench/distill_sets.py runs/exp/t-*          # the table of finished runs
    python bench/distill_sets.py --run --out runs/exp --model zoo:clip-vit-b16-openai --images IMAGES \\
        --held-out COCO.json --steps 150 --limit 256 registers:ttr neurons:ttr mlp-in:ttr neurons:tta phreg:ttr
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vitreg.results.distill import DistillResult
from vitreg.results.rundir import read_result


def row(run: Path) -> dict[str, str]:
    r = read_result(run, DistillResult)
    h, c = r.held_out, r.cost

    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.2f}%"

    cpu = "–"
    if c is not None:
        cpu = (
            "GPU"
            if c.device.startswith("cuda")
            else (f"{c.cpu.get('model', '?')}, {'native bf16' if c.cpu.get('native_bf16') else 'no native bf16'}")
        )
    return {
        "set": r.unlock,
        "teacher": r.teacher,
        "numbers trained": f"{r.trained_parameters:,}",
        "steps x batch": f"{r.steps} x {r.batch_size} on {r.images} images",
        "outliers, last block": "–"
        if h is None
        else f"{pct(h.original.outlier_share)} -> {pct(h.distilled.outlier_share)}",
        "worst block": "–" if h is None else pct(h.distilled.worst_share),
        "blocks with an outlier mode": "–"
        if h is None
        else (", ".join(str(x.layer) for x in h.layers if x.threshold_after is not None) or "none"),
        "[CLS] cosine": "–" if h is None or h.distilled.cls_cosine is None else f"{h.distilled.cls_cosine:.3f}",
        "registers' norm": "–"
        if h is None or h.distilled.register_norm is None
        else f"{h.distilled.register_norm:.1f}",
        "teacher min": "–" if c is None else f"{c.teacher_seconds / 60:.1f} ({c.teacher_forwards} fwd)",
        "train min": "–" if c is None else f"{c.train_seconds / 60:.1f}",
        "precision, CPU": "–" if c is None else f"{c.dtype}, {cpu}",
    }


def table(runs: list[Path]) -> str:
    rows = [row(r) for r in runs]
    if not rows:
        return "no runs"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="distillation run directories, or SET:TEACHER with --run")
    ap.add_argument("--run", action="store_true", help="distil each SET:TEACHER first")
    ap.add_argument("--out", type=Path, help="the runs' folder (default runs/distill-sets; --quick: a new temp one)")
    ap.add_argument("--model", default="zoo:clip-vit-b16-openai")
    ap.add_argument("--images", default="photos")
    ap.add_argument("--held-out")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--neurons", help="a neurons.json shared by every run (default: each run searches)")
    ap.add_argument("--top-k", type=int)
    ap.add_argument("--quick", action="store_true", help="a pico model with a planted neuron, a few steps (smoke run)")
    args = ap.parse_args()
    if args.out is None:  # a smoke run's folders are thrown away: a second `make bench` must not find them
        args.out = Path(tempfile.mkdtemp(prefix="distill-sets-quick-")) if args.quick else Path("runs/distill-sets")
    if args.quick:
        from vitreg.models import save_model
        from vitreg.models.planted import planted_model

        save_model(planted_model(), args.out / "planted")
        args.model, args.images, args.held_out, args.limit, args.steps = (
            str(args.out / "planted"),
            "synthetic",
            "synthetic",
            16,
            4,
        )
        args.run, args.runs = True, args.runs or ["registers:ttr", "neurons:ttr", "neurons:tta"]
    runs = [Path(r) for r in args.runs]
    if args.run:
        from vitreg.cli import main as cli

        runs = []
        for spec in args.runs:
            unlock, teacher = spec.split(":")
            out = args.out / f"t-{unlock}-{teacher}"
            argv = [
                "fix",
                "--method",
                "distill",
                "--model",
                args.model,
                "--images",
                args.images,
                "--steps",
                str(args.steps),
                "--unlock",
                unlock,
                "--teacher",
                teacher,
                "--out",
                str(out),
                "--no-report",
            ]
            argv += ["--held-out", args.held_out] if args.held_out else []
            argv += ["--limit", str(args.limit)] if args.limit else []
            argv += ["--neurons", args.neurons] if args.neurons else []
            argv += ["--top-k", str(args.top_k)] if args.top_k else []
            if args.quick:
                argv += ["--held-out-subset", "100:116", "--eval-every", "2", "--fit-limit", "16", "--views", "3"]
            if cli(argv) != 0:
                raise SystemExit(f"distillation {spec} failed")
            runs.append(out)
    print(table(runs))


if __name__ == "__main__":
    main()
