from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import quick_args
from markupsafe import escape

from vitreg.cli import main
from vitreg.errors import StageError
from vitreg.reproduce import make_plan
from vitreg.reproduce.claims import NOT_REPRODUCED, NOT_TESTED, REPRODUCED, agg, claim, corloc_gain
from vitreg.reproduce.paper import ARTIFACTS, CORLOC, GLOBAL
from vitreg.reproduce.table import background_only
from vitreg.stages import PENDING, STAMP, Stage, run_stage


def test_quick_reproduce_writes_report_md_html_and_results(quick_run):
    out, stdout = quick_run
    results = json.loads((out / "results.json").read_text())
    ids = [i["id"] for i in results["items"]]
    part1 = ["I-fig3", "I-fig4", "I-fig5", "I-table1", "I-ttr", "I-table3", "I-fig12"]
    part2 = ["II-fig3", "II-fig5a", "II-fig5b", "II-table1", "II-table3", "II-fig12"]
    lab = ["fig3", "fig4", "fig5", "table1", "table2", "table3", "fig12", "fig14"]
    assert ids == [*part1, *part2, *lab]
    assert [i["part"] for i in results["items"]] == ["I"] * len(part1) + ["II"] * len(part2) + ["III"] * 8
    # every stage of the plan ran once, with progress lines numbered against the total; without coco-mini, Part I
    # runs no LOST (no boxes)
    kinds = [s["kind"] for s in results["stages"]]
    assert kinds.count("train") == 2
    assert kinds.count("probe") == 2 + 2 + 2  # Part I, Part II (the distilled model), the lab
    assert kinds.count("lost") == 2
    assert kinds.count("fix") == 1
    assert kinds.count("distill") == 1  # the planted model is no zoo base: its registers are distilled here
    assert kinds.count("compare") == 1
    assert re.search(r"\[\d+/\d+\] train: seed 0, 0 registers: running", stdout)
    assert all(not s["cached"] for s in results["stages"])
    # ours beside the paper's: the published value is the one in paper.py, ours is read from the stage outputs
    fig3 = results["items"][len(part1) + len(part2)]
    share = next(r for r in fig3["rows"] if r["quantity"].startswith("outlier share"))
    assert share["paper"] == ARTIFACTS["outlier_ratio"]
    diag = json.loads((out / "diagnose" / "seed0" / "metrics.json").read_text())
    assert share["ours"]["0"]["values"] == [diag["models"][0]["output"]["outlier_ratio"]]
    t1 = results["items"][len(part1) + len(part2) + 3]
    probe = json.loads((out / "probe" / "seed0" / "reg4" / "probe.json").read_text())
    cls = next(r for r in t1["rows"] if r["quantity"] == "[CLS] token")
    assert cls["paper"] == GLOBAL["top1"]["cls"]
    assert cls["ours"]["4"]["values"] == [probe["global"]["results"]["cls"]["mean"]]
    # every claim has a status from the three allowed, and the report shows the same marks
    statuses = {c["status"] for c in results["claims"]}
    assert statuses <= {REPRODUCED, NOT_REPRODUCED, NOT_TESTED}
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for c in results["claims"]:
        assert c["claim"] in md
        assert str(escape(c["claim"])) in html  # as the page's templates escape text
    if NOT_REPRODUCED in statuses:
        assert "NOT REPRODUCED" in md
        assert "NOT REPRODUCED" in html
    # coco-mini was switched off: its claim says "not tested", not "reproduced"
    coco = next(c for c in results["claims"] if "coco-mini" in c["claim"])
    assert coco["status"] == NOT_TESTED
    assert str(CORLOC["rows"]["DeiT-III"][0][2]) in md
    # the page is self-contained: figures inline, nothing fetched
    assert "data:image/png;base64," in html
    assert "http://" not in html
    assert "https://" not in html
    for f in ("fig3_norm_hist.png", "fig4a_layers.png", "fig4b_training.png", "fig12_overhead.png"):
        assert (out / "figures" / f).is_file()
        assert f"figures/{f}" in md


def test_part_one_fits_on_one_half_and_measures_on_the_other(quick_run):
    """Part I on the planted model: the neuron found on the even photos, the outliers measured on the odd ones, every
    number read from the stages' files, every claim naming the model and the paper it comes from."""
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    items = {i["id"]: i for i in results["items"]}
    fix = json.loads((out / "released" / "fix" / "fix.json").read_text())
    assert fix["top_k"] >= 1  # the planted unit
    neurons = json.loads((out / "released" / "fix" / "neurons.json").read_text())
    assert neurons["search"]["neurons"][0]["layer"] == 1
    ttr = items["I-ttr"]
    moved = next(r for r in ttr["rows"] if r["quantity"].startswith("register neurons moved"))
    assert moved["ours"]["1"]["values"] == [fix["top_k"]]
    measured = json.loads((out / "released" / "fix" / "held_out" / "metrics.json").read_text())
    assert [m["key"] for m in measured["models"]] == ["a", "b"]
    fit = json.loads((out / "released" / "fix" / "metrics.json").read_text())
    assert measured["config"]["images"]["subset"] == "1::2"
    assert fit["config"]["images"]["subset"] == "0::2"
    held = next(r for r in ttr["rows"] if "held out" in r["quantity"] and "outlier share" in r["quantity"])
    assert held["ours"]["0"]["values"] == [measured["models"][0]["output"]["outlier_ratio"]]
    assert held["ours"]["1"]["values"] == [measured["models"][1]["output"]["outlier_ratio"]]
    assert measured["models"][0]["output"]["outlier_ratio"] > 0
    assert measured["models"][1]["output"]["outlier_ratio"] == 0
    part1 = [c for c in results["claims"] if c["item"].startswith("I-")]
    assert all(c["model"] for c in part1)
    assert any(c["paper"].startswith("Jiang, Dravid") for c in part1)
    # without coco-mini, LOST is not tested (never "reproduced" or "not reproduced" on no data)
    assert {c["status"] for c in part1 if c["item"] == "I-table3"} == {NOT_TESTED}
    html = (out / "report.html").read_text()
    assert "Part I: a released model" in html
    assert "Part II: registers trained into the released model" in html
    assert "Part III: registers trained into a small ViT" in html
    assert "tested on" in html
    for f in ("released_norm_hist.png", "released_layers.png", "released_maps_a.png", "released_maps_b.png"):
        assert (out / "figures" / f).is_file(), f


def test_part_two_distils_registers_into_the_released_model_and_says_post_hoc(quick_run):
    """Part II: registers distilled into Part I's model (here the planted stand-in, distilled by the run itself), its
    claims marked on that model beside the released one and the test-time register, from the stages' files."""
    out, stdout = quick_run
    results = json.loads((out / "results.json").read_text())
    items = {i["id"]: i for i in results["items"]}
    comparison = json.loads((out / "released" / "distilled" / "compare" / "comparison.json").read_text())
    assert comparison["registers"] == 4
    assert comparison["distilled_spec"] == str(out / "released" / "distilled" / "train")
    fig3 = items["II-fig3"]
    assert set(fig3["columns"]) == {"0", "d", "1"}
    last = fig3["rows"][0]
    assert last["ours"]["d"]["values"] == [comparison["distilled"]["outlier_share"]]
    assert last["ours"]["0"]["values"] == [comparison["original"]["outlier_share"]]
    assert "post hoc" in fig3["note"]
    part2 = [c for c in results["claims"] if c["item"].startswith("II-")]
    assert part2
    assert all("distilled registers" in c["model"] for c in part2)
    # the terminal summary groups the claims under their part and model
    assert "Part II: registers trained into the released model" in stdout
    assert stdout.index("Part I: a released model") < stdout.index("Part II: registers") < stdout.index("Part III")
    for f in ("distilled_layers.png", "distilled_attention.png"):
        assert (out / "figures" / f).is_file(), f


def test_part_one_is_skipped_with_the_reason_when_the_model_cannot_be_had(tmp_path, monkeypatch):
    from vitreg.reproduce.released import ReleasedPlan, prepare

    monkeypatch.setenv("VITREG_CACHE", str(tmp_path / "cache"))
    said: list[str] = []
    plan = prepare(ReleasedPlan(model="zoo:clip-vit-b16-openai"), said.append)
    assert "vitreg zoo fetch clip-vit-b16-openai" in plan.skipped
    assert said
    assert "Part I" in said[0]
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    monkeypatch.setenv("PIP_RETRIES", "0")
    plan = prepare(ReleasedPlan(model="zoo:clip-vit-b16-openai", download=True), said.append)
    assert "cannot download" in plan.skipped
    assert not (tmp_path / "cache" / "zoo" / "clip-vit-b16-openai").exists()


def test_second_reproduce_run_only_rerenders(quick_run, capsys):
    out, _ = quick_run
    before = {p: p.stat().st_mtime_ns for p in (out / "train").rglob("model.safetensors")}
    assert main(quick_args(out)) == 0
    stdout = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert all(s["cached"] for s in results["stages"])
    assert stdout.count(": cached (") == len(results["stages"])
    assert before == {p: p.stat().st_mtime_ns for p in (out / "train").rglob("model.safetensors")}


@pytest.mark.slow
def test_reproduce_takes_models_trained_from_the_same_config_from_the_zoo(quick_run, tmp_path, monkeypatch):
    from vitreg.config import to_dict
    from vitreg.errors import CheckpointError
    from vitreg.models import load_model
    from vitreg.models.load import zoo
    from vitreg.reproduce.pipeline import build_stages
    from vitreg.train.publish import add_to_zoo

    out, _ = quick_run
    root = tmp_path / "zoo"
    for n in (0, 4):
        add_to_zoo(out / "train" / "seed0" / f"reg{n}", f"quick-reg{n}", "vitreg reproduce --quick", root=root)
    monkeypatch.setattr(zoo, "ZOO_ROOT", root)
    prov = zoo.get("quick-reg4").provenance
    plan = make_plan(quick=True, coco=None)
    assert prov["train_digest"] == zoo.train_digest(to_dict(plan.train_config(0, 4)))
    assert prov["steps"] == 40
    assert prov["sha256"] == zoo.sha256_file(root / "quick-reg4" / "model.safetensors")
    assert abs(prov["top1"] - prov["top1_fp16"]) <= 0.05  # the fp16 copy predicts like the fp32 model

    run = tmp_path / "run"
    assert main(["reproduce", "--quick", "--coco", "none", "--no-released", "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    kinds = [s["kind"] for s in results["stages"]]
    assert kinds.count("zoo") == 2
    assert "train" not in kinds
    assert not (run / "train").exists()
    assert [(m["registers"], m["source"], m["zoo"]) for m in results["models"]] == [
        (0, "zoo", "quick-reg0"),
        (4, "zoo", "quick-reg4"),
    ]
    report = (run / "report.md").read_text()
    assert "zoo:quick-reg0 (trained once from this config by `vitreg reproduce --quick`" in report
    # the diagnosis of the fp16 copies matches the fp32 originals' (same images, weights rounded to fp16)
    a = json.loads((out / "diagnose" / "seed0" / "metrics.json").read_text())["models"]
    b = json.loads((run / "diagnose" / "seed0" / "metrics.json").read_text())["models"]
    for ma, mb in zip(a, b, strict=True):
        assert mb["output"]["mean_norm_normal"] == pytest.approx(ma["output"]["mean_norm_normal"], rel=0.01)

    # --retrain ignores the zoo; a changed weights file is refused on load, naming the entry
    assert all(s.kind == "train" for s in build_stages(make_plan(quick=True, coco=None, retrain=True), run)[:2])
    weights = root / "quick-reg0" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"zoo:quick-reg0: .* sha256"):
        load_model("zoo:quick-reg0")


def test_the_packaged_zoo_serves_the_default_demo_and_fits_its_budget():
    from vitreg.models.load import zoo

    assert zoo.zoo_bytes() <= zoo.MAX_ZOO_BYTES
    plan = make_plan(coco=None)
    found = [plan.zoo_entry(seed, n) for seed in plan.seeds for n in plan.registers]
    assert all(found), f"the default plan's models are not all in the zoo ({found}): retrain them and add them"
    for name in found:
        entry = zoo.get(name)
        assert entry.verify() == entry.weights
        assert entry.provenance["weights_dtype"] == "float16"


@dataclass
class _Settings:
    value: str


def _stage(tmp_path: Path, value: str, work, **kw) -> Stage:
    d = tmp_path / "out" / "a" / "b"
    return Stage(name="s", kind="train", directory=d, config=_Settings(value), work=work, outputs=("done",), **kw)


def test_stage_cache_reruns_on_new_settings_and_clears_stale_output(tmp_path):
    calls = []

    def work(resume):
        calls.append(resume)
        (tmp_path / "out" / "a" / "b" / "done").write_text("ok")

    s1 = _stage(tmp_path, "1", work)
    assert not run_stage(s1, 1, 1, log=lambda *_: None)["cached"]
    assert run_stage(s1, 1, 1, log=lambda *_: None)["cached"]
    assert len(calls) == 1
    (s1.directory / "stale.txt").write_text("from the old settings")
    s2 = _stage(tmp_path, "2", work)  # changed settings: run again, old files gone
    assert not run_stage(s2, 1, 1, log=lambda *_: None)["cached"]
    assert not (s2.directory / "stale.txt").exists()
    assert len(calls) == 2
    # a changed upstream stage invalidates its dependants
    s3 = _stage(tmp_path, "2", work, upstream=[s1])
    assert not s3.is_done()
    # paths inside the output folder are digested relative to it: a moved folder stays cached
    here, there = tmp_path / "one", tmp_path / "two"
    a = _stage(tmp_path, str(here / "x"), work, root=here)
    b = _stage(tmp_path, str(there / "x"), work, root=there)
    assert a.digest() == b.digest() != _stage(tmp_path, str(here / "y"), work, root=here).digest()


def test_stage_resumes_an_interrupted_training_and_reports_failures(tmp_path):
    seen = []

    def work(resume):
        seen.append(resume)
        (s.directory / "done").write_text("ok")

    s = _stage(tmp_path, "train", work)
    s.directory.mkdir(parents=True)
    (s.directory / PENDING).write_text(json.dumps({"digest": s.digest()}))
    (s.directory / "train_state.safetensors").write_bytes(b"state")
    run_stage(s, 1, 1, log=lambda *_: None)
    assert seen == [True]  # resumed
    assert (s.directory / "train_state.safetensors").exists()  # resumed in place, not cleared
    assert (s.directory / STAMP).is_file()
    assert not (s.directory / PENDING).exists()

    def boom(resume):
        raise StageError("stage 'boom' failed (exit status 3)")

    bad = _stage(tmp_path / "other", "boom", boom)
    with pytest.raises(StageError, match="exit status 3"):
        run_stage(bad, 1, 1, log=lambda *_: None)
    assert not bad.is_done()
    silent = _stage(tmp_path / "third", "silent", lambda resume: None)
    with pytest.raises(StageError, match="without writing done"):
        run_stage(silent, 1, 1, log=lambda *_: None)


def test_claims_need_evidence_beyond_noise():
    assert agg([None, None]) is None
    a = agg([0.2, 0.4])
    assert a.mean == pytest.approx(0.3)
    assert a.std == pytest.approx(0.1414, abs=1e-3)
    assert a.n == 2
    # a CorLoc gain inside two standard errors is not a reproduction
    small = corloc_gain(agg([0.50]), agg([0.55]), images=50)
    big = corloc_gain(agg([0.20]), agg([0.60]), images=200)
    assert small[0] is False
    assert big[0] is True
    assert claim("c", None, "e", why_none="no outliers").status == NOT_REPRODUCED
    assert claim("c", None, "e", none_status=NOT_TESTED).status == NOT_TESTED
    assert claim("c", True, "e").status == REPRODUCED
    # a segmentation probe that only ever says "background" is flagged, not compared
    assert background_only({"0": 0.94, "1": 0.0, "2": 0.0}) is True
    assert background_only({"0": 0.94, "1": 0.2}) is False
    assert background_only(None) is None


def test_plan_quick_ablation_and_bad_config():
    plan = make_plan(quick=True, ablation=True, seeds=2, coco=None)
    assert plan.registers == [0, 1, 2, 4, 8, 16]
    assert plan.seeds == [0, 1]
    assert plan.coco is None
    assert plan.train_config().model == "vit_pico_patch4_32"
    with pytest.raises(ValueError, match="seeds"):
        make_plan(seeds=0)
    assert main(["reproduce", "--quick", "--coco", "none", "no_such_key=1", "--out", "runs/never"]) == 2
    assert not Path("runs/never").exists()


def test_quick_report_page_layout_and_setting_line(quick_run):
    out, _ = quick_run
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    # the title sits in the page header (inside its margins, as on every vitreg page), with the navigation
    title = "vitreg reproduce: Vision Transformers Need Registers on a released model and on a small ViT"
    assert f"<header><h1>{title}</h1>" in html
    assert 'href="#claims"' in html
    assert 'href="#table3"' in html
    assert 'href="#I-ttr"' in html
    # overrides that unset a key read as the preset's value, never as "null"
    setting = next(line for line in md.splitlines() if line.startswith("- Part III setting:"))
    assert "null" not in setting
    assert "depth: the preset's" in setting


def test_coco_auto_looks_where_a_user_puts_it_and_says_where(tmp_path, monkeypatch):
    from vitreg.reproduce import plan as plan_module

    work = tmp_path / "work" / "clone"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("VITREG_COCO_MINI", raising=False)
    looked = plan_module.coco_candidates()
    assert work / "shared/data/coco-mini" in looked
    assert tmp_path / "work/shared/data/coco-mini" in looked
    # nothing anywhere: skipped, and the plan remembers every place it looked
    monkeypatch.setattr(plan_module, "coco_candidates", lambda: [tmp_path / "a", tmp_path / "b"])
    plan = make_plan(quick=True)
    assert plan.coco is None
    assert plan.coco_searched == [str(tmp_path / "a"), str(tmp_path / "b")]
    from vitreg.reproduce.collect import coco_note

    assert str(tmp_path / "a") in coco_note(plan)
    assert "VITREG_COCO_MINI" in coco_note(plan)
    # a coco-mini beside the working directory's parent (a clone next to shared/) is found
    monkeypatch.undo()
    monkeypatch.chdir(work)
    ann = tmp_path / "work" / "shared/data/coco-mini" / "annotations" / "instances_train2017.json"
    ann.parent.mkdir(parents=True)
    ann.write_text('{"images": []}')
    monkeypatch.delenv("VITREG_COCO_MINI", raising=False)
    assert make_plan(quick=True).coco == str(ann)
    # and $VITREG_COCO_MINI comes first
    elsewhere = tmp_path / "mine"
    (elsewhere / "annotations").mkdir(parents=True)
    (elsewhere / "annotations" / "instances_train2017.json").write_text('{"images": []}')
    monkeypatch.setenv("VITREG_COCO_MINI", str(elsewhere))
    assert make_plan(quick=True).coco == str(elsewhere / "annotations" / "instances_train2017.json")


@pytest.mark.slow
def test_a_pretrained_pair_end_to_end_on_random_weights(coco_mini, tmp_path, capsys):
    """`reproduce --models A,B`: no training; the paper's stages on DINOv2-S/14 architectures without and with
    registers, LOST on coco-mini; random weights, so the report must say that they reproduce nothing."""
    ann = coco_mini / "annotations" / "instances_train2017.json"
    out = tmp_path / "pair"
    argv = ["reproduce", "--models", "dinov2_vits14,dinov2_vits14_reg", "--random-init", "--coco20k", str(ann)]
    assert main([*argv, "--quick", "--threads", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["registers"] == [0, 4]
    assert results["plan"]["family"] == "DINOv2"
    assert [s["kind"] for s in results["stages"]] == ["diagnose", "probe", "probe", "lost", "lost", "flops"]
    assert {c["status"] for c in results["claims"]} == {NOT_TESTED}
    assert all("random weights reproduce nothing" in c["evidence"] for c in results["claims"])
    t3 = next(i for i in results["items"] if i["id"] == "table3")
    assert t3["rows"][0]["quantity"] == "CorLoc, COCO20k"
    assert t3["rows"][0]["paper"] == CORLOC["rows"]["DINOv2"][0][2]  # published, beside ours
    lost = json.loads((out / "lost" / "COCO20k" / "reg4" / "lost.json").read_text())
    assert lost["settings"]["features"] == "k"  # the paper's features for DINOv2
    assert t3["rows"][0]["ours"]["4"]["values"] == [lost["results"][0]["corloc"]]
    html = (out / "report.html").read_text()
    assert "RANDOM WEIGHTS" in html
    assert "RANDOM WEIGHTS" in (out / "report.md").read_text()


def test_a_pretrained_pair_is_checked_before_any_work(tmp_path):
    from vitreg.errors import ConfigError
    from vitreg.reproduce import make_pair_plan

    with pytest.raises(ConfigError, match="A without registers and B with them"):
        make_pair_plan(["dinov2_vits14_reg", "dinov2_vits14"], {}, random_init=True)
    with pytest.raises(ConfigError, match="two models"):
        make_pair_plan(["dinov2_vits14"], {}, random_init=True)
    with pytest.raises(ConfigError, match="families"):
        make_pair_plan(["vit_small_patch16_224", "vit_small_patch16_224_reg4"], {}, random_init=True)
    with pytest.raises(ConfigError, match="--voc07"):
        make_pair_plan(["dinov2_vits14", "dinov2_vits14_reg"], {"VOC07": str(tmp_path / "nope")}, random_init=True)
    from vitreg.errors import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match=r"dinov2_vits14_pretrain\.pth"):
        make_pair_plan(["dinov2_vits14", "dinov2_vits14_reg"], {})  # no weights on disk: said before any work


def test_a_run_keeps_the_zoo_choices_it_started_with(monkeypatch, tmp_path):
    # an entry added to the zoo while a run trains must not send its report to look for the models in the zoo
    from vitreg.models.load import zoo

    monkeypatch.setattr(zoo, "ZOO_ROOT", tmp_path / "empty")
    pinned = make_plan(coco=None).pin_models()
    assert pinned.models == {"0/0": None, "0/4": None}
    monkeypatch.undo()  # the packaged zoo, which holds both models
    assert make_plan(coco=None).zoo_entry(0, 0) == "lab-reg0-seed0"
    assert pinned.zoo_entry(0, 0) is None
    assert pinned.zoo_entry(0, 4) is None
