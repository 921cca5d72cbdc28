"""The run-directory contract: typed results written and read through one module, old run directories of the
current schema still load, and a file that does not fit is named with its key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vitreg.errors import RunDirError
from vitreg.results import (
    SCHEMA_VERSION,
    DiagnoseResult,
    FlopsResult,
    LostResult,
    ProbeResult,
    load_run,
    read_result,
    to_json,
    write_result,
)

FIXTURES = Path(__file__).parent / "fixtures" / "rundir_v1"  # written by vitreg 0.1.0 before schema_version existed
OLD = [("diag", DiagnoseResult, "metrics.json"), ("probe", ProbeResult, "probe.json"),
       ("lost", LostResult, "lost.json"), ("flops", FlopsResult, "flops.json")]  # fmt: skip


def _subset(new: object, old: object, where: str = "") -> None:
    """Every key and value of ``old`` is in ``new`` with the same value and type."""
    if isinstance(old, dict):
        assert isinstance(new, dict), where
        for k, v in old.items():
            assert k in new, f"{where}.{k} lost"
            _subset(new[k], v, f"{where}.{k}")
    elif isinstance(old, list):
        assert isinstance(new, list), where
        assert len(new) == len(old), where
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            _subset(a, b, f"{where}[{i}]")
    else:
        assert type(new) is type(old), where
        assert new == old, f"{where}: {new!r} != {old!r}"


@pytest.mark.parametrize(("folder", "cls", "name"), OLD)
def test_old_run_directories_load_and_round_trip(folder, cls, name, tmp_path):
    result = read_result(FIXTURES / folder, cls)
    old = json.loads((FIXTURES / folder / name).read_text())
    assert "schema_version" not in old
    assert result.schema_version == SCHEMA_VERSION
    _subset(to_json(result), old)  # nothing of the old file is lost or changed by reading and writing it
    write_result(tmp_path, result)
    assert read_result(tmp_path, cls) == result


def test_old_diagnose_run_renders_a_report(tmp_path):
    from vitreg.report.html import write_report

    run_dir = tmp_path / "diag"
    shutil.copytree(FIXTURES / "diag", run_dir)
    run = load_run(run_dir)
    assert [m.key for m in run.models] == ["a", "b"]
    assert run.models[1].num_registers == 2
    page = write_report(run_dir).read_text()
    assert f"{100 * run.models[0].result.output.outlier_ratio:.2f}%" in page


def test_a_value_that_does_not_fit_is_named_with_its_key(tmp_path):
    data = json.loads((FIXTURES / "probe" / "probe.json").read_text())
    data["local"]["position"]["normal"]["count"] = "many"
    (tmp_path / "probe.json").write_text(json.dumps(data))
    with pytest.raises(RunDirError, match=r"probe.json: local.position.normal.count should be an integer, got 'many'"):
        read_result(tmp_path, ProbeResult)
    del data["local"]["position"]["normal"]["count"]
    data.pop("threshold")
    (tmp_path / "probe.json").write_text(json.dumps(data))
    with pytest.raises(RunDirError, match="threshold is missing"):
        read_result(tmp_path, ProbeResult)


def test_a_newer_schema_or_another_command_is_refused(tmp_path):
    data = json.loads((FIXTURES / "flops" / "flops.json").read_text())
    (tmp_path / "flops.json").write_text(json.dumps(data | {"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(RunDirError, match="upgrade vitreg"):
        read_result(tmp_path, FlopsResult)
    (tmp_path / "flops.json").write_text(json.dumps(data | {"command": "lost"}))
    with pytest.raises(RunDirError, match="not a flops result"):
        read_result(tmp_path, FlopsResult)
    with pytest.raises(RunDirError, match="holds no LostResult"):
        read_result(tmp_path, LostResult)
