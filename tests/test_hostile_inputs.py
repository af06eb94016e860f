"""The property-based battery of issue 17: malformed files of every kind, hostile arrays and hostile
arguments, through the public API and the CLI.

Expectation for every example: the call succeeds, or it raises a ``ValueError``-family error
(``HgdefendError``) naming the problem — never another exception type, a traceback or an
allocation past the memory guard (the limit is lowered to 256 MiB here) — and it leaves no
temporary file behind and every input file unchanged; the CLI answers exit 2 with one line
``error: ...``. Bounded: derandomized, small ``max_examples``, no deadline (well under 3 minutes on
2 CPU cores). The counts per surface and class are printed at the end (tests/README.md records them).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from hgdefend import HyperGAN, load_data, load_model, save_model
from hgdefend.cli.main import cli
from hgdefend.envelope import content_sha256
from hgdefend.export import export_onnx
from hgdefend.export.fileformat import read_file
from hgdefend.export.inputs import load_inputs
from hgdefend.targets import digits_small

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
COUNTS: Counter = Counter()
"""(surface, outcome) -> examples; outcome is 'accepted' or 'refused: <error class>'."""


@pytest.fixture(scope="module", autouse=True)
def _report(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not COUNTS:
        return
    with capture.global_and_fixture_disabled():  # shown even when output is captured
        reporter.write_line("")
        reporter.write_line("hostile-input battery (surface: outcome = examples):")
        for (surface, outcome), n in sorted(COUNTS.items()):
            reporter.write_line(f"  {surface:<32} {outcome:<34} {n:>4}")
        reporter.write_line(f"  total {sum(COUNTS.values())} examples")


@pytest.fixture(autouse=True)
def _limit(monkeypatch):
    monkeypatch.setenv("HGDEFEND_MAX_MEMORY", "256M")


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _expect(surface: str, fn, folder: Path | None = None):
    """Run ``fn``; it may succeed or raise a ValueError-family error, nothing else. Inputs in
    ``folder`` stay unchanged and no temporary file appears there."""
    before = _digest(folder) if folder else {}
    try:
        fn()
        COUNTS[surface, "accepted"] += 1
    except ValueError as exc:  # HgdefendError, ModelFileError, SchemaError, ResourceLimitError ...
        assert str(exc), f"{surface}: an error without a message"
        COUNTS[surface, f"refused: {type(exc).__name__}"] += 1
    if folder:
        assert _digest(folder) == before, f"{surface}: an input file changed"
        assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")], f"{surface}: temporary file left"


# --------------------------------------------------------------------------- model files
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    hg = HyperGAN(digits_small(), noise_dim=16, code_dim=8, hidden=32)
    save_model(folder / "m.safetensors", hg, dataset={"name": "digits", "classes": list(range(10))})
    return folder


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _config_paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            yield from _config_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*prefix, i)
            yield from _config_paths(v, (*prefix, i))


@SETTINGS
@given(data=st.data(), value=JSON, rehash=st.booleans())
def test_model_file_with_edited_header_field(model_dir, tmp_path, data, value, rehash):
    src = model_dir / "m.safetensors"
    with safe_open(str(src), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["hgdefend_config"])
    path = data.draw(st.sampled_from(sorted(_config_paths(config), key=str)))
    node = config
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    meta["hgdefend_config"] = json.dumps(config)
    if rehash:  # an attacker who can write the file can recompute the digest
        meta["content_sha256"] = content_sha256(config, tensors)
    out = tmp_path / "edited.safetensors"
    save_file(tensors, str(out), meta)
    _expect("model file: header field", lambda: load_model(out), tmp_path)


@SETTINGS
@given(cut=st.integers(0, 10_000), noise=st.binary(max_size=64))
def test_model_file_truncated_or_garbled(model_dir, tmp_path, cut, noise):
    raw = (model_dir / "m.safetensors").read_bytes()
    out = tmp_path / "bad.safetensors"
    out.write_bytes(raw[: cut % len(raw)] + noise)
    _expect("model file: bytes", lambda: load_model(out), tmp_path)
    COUNTS["cli info: bytes", "exit 2"] += _cli_refuses(["info", "-m", str(out)])


# --------------------------------------------------------------------------- arrays
DTYPES = st.sampled_from(["f4", "f8", "f2", "i1", "u1", "i8", "b1", "c8", "U3", "M8[s]"])
SHAPES = st.one_of(
    st.lists(st.integers(0, 9), min_size=0, max_size=5).map(tuple),
    st.integers(0, 4).map(lambda n: (n, 1, 8, 8)),  # the model's shape: NaN, inf and range decide
)
SPECIALS = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, -1.0, 255.0, 0.5])


def _array(dtype, shape, special, seed):
    rng = np.random.default_rng(seed)
    a = rng.random(shape) * 2 - 0.5
    if a.size and np.dtype(dtype).kind == "f":
        a.flat[seed % a.size] = special
    try:
        with np.errstate(all="ignore"):
            return a.astype(dtype)
    except (TypeError, ValueError):
        return np.zeros(shape, dtype)


@SETTINGS
@given(dtype=DTYPES, shape=SHAPES, special=SPECIALS, seed=st.integers(0, 2**16), npz=st.booleans())
def test_hostile_input_arrays(onnx_dir, tmp_path, dtype, shape, special, seed, npz):
    """Through ``detect`` with a valid exported file: wrong shapes, dtypes, NaN, inf, huge values."""
    a = _array(dtype, shape, special, seed)
    path = tmp_path / ("x.npz" if npz else "x.npy")
    (np.savez(path, x=a) if npz else np.save(path, a))
    _expect("inputs (.npy/.npz)", lambda: load_inputs(path, "--input"), tmp_path)
    for invalid in ("error", "flag"):
        args = ["detect", "-m", str(onnx_dir / "e.onnx"), "--input", str(path), "--invalid", invalid]
        ok = _cli_refuses(args) == 0
        COUNTS["cli detect: hostile arrays", "exit 0" if ok else "exit 2"] += 1


LABELS = st.one_of(
    st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=40).map(np.array),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=40).map(np.array),
    st.lists(st.integers(0, 3), min_size=1, max_size=40).map(np.array),
    st.lists(st.text(max_size=3), min_size=1, max_size=10).map(np.array),
    st.just(np.zeros((4, 2), np.int64)),
)


@SETTINGS
@given(dtype=DTYPES, shape=SHAPES, special=SPECIALS, seed=st.integers(0, 2**16), y=LABELS)
def test_hostile_npz_datasets(tmp_path, dtype, shape, special, seed, y):
    path = tmp_path / "d.npz"
    np.savez(path, x=_array(dtype, shape, special, seed), y=y)
    _expect("dataset (.npz)", lambda: load_data(str(path)), tmp_path)


@SETTINGS
@given(
    declared=st.lists(st.integers(0, 2**45), min_size=1, max_size=4).map(tuple),
    descr=st.sampled_from(["<f4", "|u1", "|O", "<i8", ">f8", "<U5"]),
    payload=st.binary(max_size=256),
    member=st.sampled_from(["x.npy", "x", "y.npy", "../x.npy"]),
)
def test_npz_with_forged_array_headers(tmp_path, declared, descr, payload, member):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": declared})
    path = tmp_path / "f.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, np.lib.format.magic(1, 0) + buf.getvalue()[8:] + payload)
        zf.writestr("y.npy" if member != "y.npy" else "x.npy", b"\x93NUMPY garbage")
    _expect("dataset (.npz): forged headers", lambda: load_data(str(path)), tmp_path)
    _expect("inputs (.npz): forged headers", lambda: load_inputs(path, "--input"), tmp_path)


# --------------------------------------------------------------------------- ONNX files
@pytest.fixture(scope="module")
def onnx_dir(model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    export_onnx(model_dir / "m.safetensors", 2, folder / "e.onnx", threshold=0.5, exporter="legacy")
    return folder


@SETTINGS
@given(where=st.floats(0, 1), flip=st.integers(1, 255), cut=st.booleans())
def test_onnx_file_with_flipped_or_missing_bytes(onnx_dir, tmp_path, where, flip, cut):
    raw = bytearray((onnx_dir / "e.onnx").read_bytes())
    i = min(len(raw) - 1, int(where * len(raw)))
    if cut:
        raw = raw[:i]
    else:
        raw[i] ^= flip
    path = tmp_path / "bad.onnx"
    path.write_bytes(bytes(raw))
    _expect("onnx file: bytes", lambda: read_file(path), tmp_path)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 1, 8, 8), np.float32))
    COUNTS["cli detect: onnx bytes", "exit 2"] += _cli_refuses(
        ["detect", "-m", str(path), "--input", str(x)], allow_ok=False
    )


# --------------------------------------------------------------------------- CLI arguments
def _cli_refuses(args, allow_ok=True) -> int:
    res = CliRunner().invoke(cli, args)
    if allow_ok and res.exit_code == 0:
        return 0
    assert res.exit_code == 2, (args, res.output, res.exception)
    assert isinstance(res.exception, SystemExit), (args, res.exception)  # no traceback
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, res.output)
    return 1


ARG = st.one_of(
    st.integers(-(2**63), 2**63).map(str),
    st.sampled_from(["0", "-1", "1e7", "1000000000", "nan", "inf", "", " ", "0-1000000000", "meta", "bogus"]),
    st.text(max_size=12),
)
OPTIONS = {
    "train": ["--nets-per-step", "--batch-size", "--steps", "--in-classes", "--device", "--max-memory",
              "--lr", "--hidden", "--time-budget", "--threads"],
    "evaluate": ["--members", "--in-classes", "--target-fpr", "--device", "--max-memory", "--attack-inputs",
                 "--eps", "--fail-under", "--threads"],
    "export": ["--members", "--parity-batch", "--threshold", "--target-fpr", "--tolerance", "--opset",
               "--score"],
    "detect": ["--batch-size", "--expected-sha256", "--format", "--invalid", "--device", "--threads"],
}  # fmt: skip


@SETTINGS
@given(data=st.data())
def test_hostile_cli_arguments(tmp_path, data):
    """Every value of every option ends in one line and exit 2 (a missing file stops each command
    after its arguments are checked, so nothing long runs)."""
    command = data.draw(st.sampled_from(sorted(OPTIONS)))
    option = data.draw(st.sampled_from(OPTIONS[command]))
    value = data.draw(ARG)
    missing = str(tmp_path / "missing.safetensors")
    base = {
        "train": ["train", "--dataset", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o")],
        "evaluate": ["evaluate", "-m", missing, "--out", str(tmp_path / "o")],
        "export": ["export", "-m", missing, "-k", "2", "--out", str(tmp_path / "o.onnx")],
        "detect": ["detect", "-m", str(tmp_path / "missing.onnx"), "--input", str(tmp_path / "x.npy")],
    }[command]
    if option == "--members" and command == "export":
        base = [a for a in base if a not in ("-k", "2")]
    COUNTS[f"cli {command}: arguments", "exit 2"] += _cli_refuses([*base, option, value], allow_ok=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.onnx").exists()


def test_input_npy_or_npz_declaring_23_gib_array_is_refused_before_reading(tmp_path):
    """Found by the battery: ``detect --input`` read .npy/.npz with np.load before any size check."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": (193, 32741587)}
    )
    raw = np.lib.format.magic(1, 0) + buf.getvalue()[8:]
    (tmp_path / "x.npy").write_bytes(raw)
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as zf:
        zf.writestr("x.npy", raw)
    for name in ("x.npy", "x.npz"):
        with pytest.raises(
            ValueError, match=r"needs about 70\.6 GiB, more than the memory limit of 256\.0 MiB"
        ):
            load_inputs(tmp_path / name, "--input")


def test_detect_flag_mode_writes_strict_json_and_errors_name_the_input(onnx_dir, tmp_path):
    """``--invalid flag`` passes a NaN input to the graph: its scores are NaN, written as null so
    that a strict parser (JSON.parse, Go, jq) reads every line; ``--invalid error`` names the input."""
    from hgdefend.export.runtime import OnnxDetector

    shape = OnnxDetector(onnx_dir / "e.onnx").input_shape
    x = np.random.default_rng(0).random((3, *shape)).astype(np.float32)
    x[1].flat[0] = np.nan
    path = tmp_path / "x.npy"
    np.save(path, x)
    res = CliRunner().invoke(cli, ["detect", "-m", str(onnx_dir / "e.onnx"), "--input", str(path),
                                   "--invalid", "flag", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output

    def strict(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    rows = [json.loads(line, parse_constant=strict) for line in res.stdout.splitlines()]
    assert len(rows) == 3 and rows[1]["input_valid"] is False and rows[1]["is_adversarial"] is True
    assert any(v is None for v in rows[1].values())  # the NaN scores
    res = CliRunner().invoke(cli, ["detect", "-m", str(onnx_dir / "e.onnx"), "--input", str(path)])
    assert res.exit_code == 2 and "input 1 contains NaN" in res.output and "--invalid flag" in res.output
