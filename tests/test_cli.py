"""The CLI contract: help, version and argument errors answer without importing torch; a user's mistake is one line
and exit status 2; a bug keeps its traceback (exit status 1). That the library never imports the CLI is held, with
every other floor of the package, by test_layering."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vitreg.cli import main
from vitreg.commands import COMMANDS

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize(
    ("argv", "rc"),
    [
        (["--help"], 0),
        (["--version"], 0),
        (["diagnose", "--help"], 0),
        (["train", "--help"], 0),
        (["lost", "--model", "m", "--bias", "x"], 2),
        (["diagnose", "--no-such-flag"], 2),
        (["no-such-command"], 2),
    ],
)
def test_help_version_and_argument_errors_import_no_torch(argv, rc):
    code = (
        f"import sys\nfrom vitreg.cli import main\nrc = main({argv!r})\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'matplotlib') if m in sys.modules)\n"
        "print('RC', rc, 'HEAVY', heavy)"
    )
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert f"RC {rc} HEAVY []" in out.stdout


def test_every_command_parses_its_own_arguments():
    from vitreg.cli import build_parser

    for name in COMMANDS:
        parser = build_parser(name)
        sub = parser._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]
        assert sub.get_default("func") is not None, name


def test_user_error_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    # a user's mistake: one line naming the file, exit status 2
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(tmp_path / "missing") in err[0]
    # a bug (a plain ValueError from inside the library) is not dressed up as a user error
    import vitreg.commands.models as models_command

    def bug(args):
        raise ValueError("a bug in vitreg")

    monkeypatch.setattr(models_command, "run", bug)
    with pytest.raises(ValueError, match="a bug in vitreg"):
        main(["models"])
    out = _python(
        "import sys\nimport vitreg.commands.models as m\nfrom vitreg.cli import main\n"
        "m.run = lambda args: [][1]\nsys.exit(main(['models']))"
    )
    assert out.returncode == 1
    assert "Traceback" in out.stderr
    assert "IndexError" in out.stderr


def test_configs_and_results_import_without_torch():
    """Job configs and result types are plain data: building one for reproduce or reading a run needs no torch."""
    out = _python(
        "import sys\nimport vitreg.jobs.diagnose, vitreg.jobs.probe, vitreg.jobs.lost, vitreg.jobs.flops\n"
        "import vitreg.results, vitreg.results.reproduce, vitreg.results.lab, vitreg.train.config, vitreg.stages\n"
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


INSPECT = ["inspect", "--model", "vit_pico_patch4_32", "--random-init", "--threads", "1"]


def test_img_size_takes_h_or_hxw(capsys):
    from vitreg.commands._common import size_arg
    from vitreg.jobs.specs import ModelSpec

    assert size_arg("48") == 48
    assert size_arg("32x48") == (32, 48)
    model = ModelSpec(spec="vit_pico_patch4_32", img_size=size_arg("32x48"), random_init=True).load()
    assert tuple(model.patch_embed.img_size) == (32, 48)
    assert main([*INSPECT, "--img-size", "32x48", "--limit", "2"]) == 0
    assert "model vit_pico_patch4_32: 2 images" in capsys.readouterr().out
    assert main([*INSPECT, "--img-size", "32x"]) == 2
    assert "image size is H or HxW" in capsys.readouterr().err


def test_inspect_writes_its_result(tmp_path):
    from vitreg.results import InspectResult, read_result

    assert main([*INSPECT, "--limit", "3", "--out", str(tmp_path / "i")]) == 0
    r = read_result(tmp_path / "i", InspectResult)
    assert r.num_images == 3
    assert r.images == "synthetic"
    assert len(r.layers) == 2
