"""Fuzzed weight files: safetensors (corrupt, truncated, a header length that lies, a huge header) and ``.pth`` files
(zip archives truncated or with wrong members, legacy files, pickles of other objects). Each case ends in a state dict
of tensors or one CheckpointError line naming the file, within the address-space bound of fuzz_support."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from fuzz_support import CASES, FUZZ, at_least, outcome, summary
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save

from vitreg.errors import CheckpointError
from vitreg.models.load.checkpoints import read_state_dict
from vitreg.models.load.filecheck import MAX_HEADER_BYTES
from vitreg.models.presets import create_model
from vitreg.train.checkpoint import load_train_state, read_train_state, save_train_state

MIN_CASES = CASES
# torch and zipfile warn about the odd pickles and duplicate members generated here, which is the point
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _dicts() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {"a": torch.randn(3, 4, generator=g), "b": torch.arange(6, dtype=torch.int64)},
        {"module.blocks.0.w": torch.randn(2, generator=g).half(), "module.cls_token": torch.zeros(1, 1, 4)},
        {"x": torch.ones(0), "y": torch.tensor([True, False]), "z": torch.randn(2, 2, generator=g).bfloat16()},
    ]


# ------------------------------------------------------------------------------------------------ safetensors
def _safetensors_bases() -> list[bytes]:
    out = [save(d, metadata={"format": "pt"}) for d in _dicts()]
    out.append(save({"w": torch.zeros(2)}, metadata={"state": json.dumps({"format": "vitreg-train-state-1"})}))
    return out


ST_BASES = _safetensors_bases()
LENGTHS = st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 7, 8, 2**63, 2**64 - 1, MAX_HEADER_BYTES + 1, 10**9])
JSON_BITS = st.sampled_from(
    [
        '{"a": {"dtype": "F32", "shape": [1000000000000], "data_offsets": [0, 4000000000000]}}',
        '{"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 16]}}',
        '{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 16]}}',
        '{"a": {"dtype": "XX", "shape": [4], "data_offsets": [0, 16]}}',
        '{"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}}',
        '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], '
        '"data_offsets": [0, 8]}}',
        '{"__metadata__": {"state": [1, 2]}, "a": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]}}',
        '{"__metadata__": {"state": "{\\"format\\": \\"vitreg-train-state-1\\"}"}}',
        "[]",
        "{}",
        '{"a": 1}',
        "{" * 1000,
    ]
)


@st.composite
def safetensors_bytes(draw) -> bytes:
    base = bytearray(draw(st.sampled_from(ST_BASES)))
    kind = draw(st.sampled_from(["keep", "length", "header", "json", "truncate", "flip", "append", "bytes"]))
    header_len = struct.unpack("<Q", bytes(base[:8]))[0]
    if kind == "length":  # the 8-byte length lies
        base[:8] = struct.pack("<Q", draw(LENGTHS))
    elif kind == "header":  # a byte of the JSON header changed
        i = draw(st.integers(8, 8 + header_len - 1))
        base[i] = draw(st.integers(0, 255))
    elif kind == "json":  # another header, with the length told right or not
        text = draw(JSON_BITS).encode()
        body = bytes(base[8 + header_len :]) if draw(st.booleans()) else b"\0" * draw(st.integers(0, 40))
        length = len(text) if draw(st.integers(0, 3)) else draw(LENGTHS)
        base = bytearray(struct.pack("<Q", length) + text + body)
    elif kind == "truncate":
        base = base[: draw(st.integers(0, len(base) - 1))]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            base[draw(st.integers(0, len(base) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif kind == "append":
        base += draw(st.binary(min_size=1, max_size=64))
    else:
        return draw(st.binary(max_size=200))
    return bytes(base)


def _check_state_dict(sd: object) -> None:
    assert isinstance(sd, dict)
    assert sd
    assert all(isinstance(k, str) for k in sd)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())


def test_safetensors_files(tmp_path: Path):
    seen: Counter = Counter()
    weights, state = tmp_path / "w.safetensors", tmp_path / "train_state.safetensors"

    @FUZZ
    @given(safetensors_bytes())
    def case(data: bytes):
        weights.write_bytes(data)
        state.write_bytes(data)
        result = outcome(lambda: read_state_dict(weights), weights, seen)
        if not isinstance(result, CheckpointError):
            _check_state_dict(result)
        as_state = outcome(lambda: read_train_state(state), state, Counter())  # the --resume reader, same bytes
        if not isinstance(as_state, CheckpointError):
            assert as_state[1]["format"] == "vitreg-train-state-1"

    case()
    summary("safetensors files", seen)
    assert seen["cases"] >= MIN_CASES
    assert seen["result"] >= at_least(50)  # (hypothesis never repeats a case: an untouched file counts once)
    assert seen["CheckpointError"] >= at_least(1000)


@pytest.mark.parametrize(
    ("length", "message"),
    [(2**63, "the header claims"), (10**9, "the header claims"), (MAX_HEADER_BYTES + 1, "refused: a 100000001-byte")],
)
def test_header_length_lies_are_refused_before_reading(tmp_path: Path, length: int, message: str):
    path = tmp_path / "w.safetensors"
    body = b" " * (MAX_HEADER_BYTES + 2) if length == MAX_HEADER_BYTES + 1 else b"{}"
    path.write_bytes(struct.pack("<Q", length) + body)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path)


def test_damaged_train_state_meta_is_a_checkpoint_error(tmp_path: Path):
    """The right format name over contents that do not fit: --resume says the checkpoint is damaged."""
    model = create_model("vit_pico_patch4_32")
    opt = torch.optim.AdamW(model.parameters())
    path = save_train_state(tmp_path, model, opt, None, step=3)
    tensors, meta = read_train_state(path)
    tensors = {k: v.clone() for k, v in tensors.items()}  # (read tensors map the file, which is rewritten below)
    for i, broken in enumerate(({**meta, "step": "three"}, {**meta, "optimizer": []}, {**meta, "rng": {}})):
        bad = tmp_path / f"bad{i}" / "train_state.safetensors"
        bad.parent.mkdir()
        bad.write_bytes(save(tensors, metadata={"state": json.dumps(broken)}))
        with pytest.raises(CheckpointError, match="damaged training checkpoint"):
            load_train_state(bad, model, opt, None)
    other = create_model("vit_pico_patch4_32", registers=2)  # weights of another shape
    with pytest.raises(CheckpointError, match="weights do not fit this model"):
        load_train_state(path, other, torch.optim.AdamW(other.parameters()), None)


# ------------------------------------------------------------------------------------------------------- .pth
class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def _pth_bases() -> list[bytes]:
    out = []
    for i, d in enumerate(_dicts()):
        buf = io.BytesIO()
        obj = {"model": d, "epoch": 3, "args": [1, "x"]} if i == 0 else d
        torch.save(obj, buf, _use_new_zipfile_serialization=i != 2)  # the third one in the legacy format
        out.append(buf.getvalue())
    buf = io.BytesIO()
    torch.save({"teacher": {"backbone.w": torch.zeros(2)}, "n": 1}, buf)
    out.append(buf.getvalue())
    return out


PTH_BASES = _pth_bases()
PICKLES = [
    pickle.dumps(_Evil(), protocol=2),
    pickle.dumps({"a": 1}, protocol=2),
    pickle.dumps([1, 2, 3], protocol=2),
    b"cos\nsystem\n(S'echo pwned'\ntR.",
    b"\x80\x02}q\x00.",
    b"not a pickle",
]


def _rezip(data: bytes, draw) -> bytes:
    """The archive's members with some dropped, renamed, replaced or cut, written again as a valid zip."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = [(n, z.read(n)) for n in z.namelist()]
    out = []
    for name, blob in members:
        action = draw(st.sampled_from(["keep", "keep", "keep", "drop", "rename", "replace", "cut"]))
        if action == "drop":
            continue
        if action == "rename":
            name = draw(st.sampled_from(["../../x", "archive/data.pkl", "other/data.pkl", name + "x", "/abs"]))
        elif action == "replace":
            blob = draw(st.sampled_from(PICKLES)) if name.endswith(".pkl") else draw(st.binary(max_size=32))
        elif action == "cut":
            blob = blob[: draw(st.integers(0, max(len(blob) - 1, 0)))]
        out.append((name, blob))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, blob in out:
            z.writestr(name, blob)
    return buf.getvalue()


@st.composite
def pth_bytes(draw) -> bytes:
    base = draw(st.sampled_from(PTH_BASES))
    kind = draw(st.sampled_from(["members", "members", "truncate", "flip", "pickle", "bytes"]))
    if kind == "members" and zipfile.is_zipfile(io.BytesIO(base)):
        return _rezip(base, draw)
    if kind == "truncate":
        return base[: draw(st.integers(0, len(base) - 1))]
    if kind == "pickle":
        return draw(st.sampled_from(PICKLES))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


def test_pth_files(tmp_path: Path, capfd):
    seen: Counter = Counter()
    path = tmp_path / "w.pth"

    @FUZZ
    @given(pth_bytes())
    def case(data: bytes):
        path.write_bytes(data)
        result = outcome(lambda: read_state_dict(path), path, seen)
        if not isinstance(result, CheckpointError):
            _check_state_dict(result)

    case()
    assert "pwned" not in capfd.readouterr().out  # no pickle ever ran os.system
    with capfd.disabled():
        summary(".pth files", seen)
    assert seen["cases"] >= MIN_CASES
    assert seen["result"] >= at_least(50)  # (hypothesis never repeats a case: an untouched file counts once)
    assert seen["CheckpointError"] >= at_least(1000)


def test_legacy_pth_length_field_allocates_nothing_it_claims(tmp_path: Path):
    """A legacy (pre-zip) .pth whose string length says 4 GiB: read from memory, it fails on the bytes it has."""
    from fuzz_support import bounded

    buf = io.BytesIO()
    torch.save({"a": torch.zeros(4)}, buf, _use_new_zipfile_serialization=False)
    data = bytearray(buf.getvalue())
    i = data.index(b"X\x01\x00\x00\x00a")  # BINUNICODE of the key "a"
    data[i + 1 : i + 5] = struct.pack("<I", 0xFFFFFFF0)
    path = tmp_path / "legacy.pth"
    path.write_bytes(bytes(data))
    with bounded(memory=256 << 20), pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert "MemoryError" not in str(info.value)
    assert str(path) in str(info.value)
