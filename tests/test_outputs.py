"""Outputs never clobber inputs, never follow planted links, and leave no temporary file when the
command is terminated (issue 17, item 3); each test is named after a failure it fixes."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from hgdefend.cli.main import cli
from hgdefend.errors import HgdefendError
from hgdefend.fileio import atomic_path, atomic_write, check_output


def _one_line(res, *needles):
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for needle in needles:
        assert needle in lines[0], res.output


@pytest.fixture
def files(tmp_path):
    onnx = tmp_path / "ens.onnx"
    onnx.write_bytes(b"not really onnx, but the check comes first")
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 1, 8, 8), np.float32))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    return onnx, x, victim


def test_detect_out_pointing_at_input_onnx_is_refused(files):
    onnx, x, _ = files
    before = onnx.read_bytes()
    for out in (onnx, onnx.parent / "." / onnx.name, x):
        res = CliRunner().invoke(cli, ["detect", "-m", str(onnx), "--input", str(x), "--out", str(out)])
        _one_line(res, "--out:", "is an input of this command")
    assert onnx.read_bytes() == before and np.load(x).shape == (2, 1, 8, 8)


def test_detect_out_through_planted_symlink_is_refused(files, tmp_path):
    onnx, x, victim = files
    link = tmp_path / "records.csv"
    link.symlink_to(victim)
    res = CliRunner().invoke(cli, ["detect", "-m", str(onnx), "--input", str(x), "--out", str(link)])
    _one_line(res, "--out:", "is a symbolic link")
    assert victim.read_text() == "precious" and link.is_symlink()


def test_train_out_with_planted_symlink_is_refused_before_training(files, tmp_path):
    _, _, victim = files
    for name in ("model.safetensors", "checkpoint.safetensors", "train_log.json"):
        out = tmp_path / f"run_{name}"
        out.mkdir()
        (out / name).symlink_to(victim)
        res = CliRunner().invoke(cli, ["train", "--steps", "1", "--out", str(out), "-q"])
        _one_line(res, "--out:", name, "is a symbolic link")
        assert victim.read_text() == "precious" and sorted(p.name for p in out.iterdir()) == [name]


def test_train_out_folder_that_is_a_symlink_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    res = CliRunner().invoke(cli, ["train", "--steps", "1", "--out", str(tmp_path / "link"), "-q"])
    _one_line(res, "--out:", "is a symbolic link")
    assert not any(real.iterdir())


def test_evaluate_out_with_planted_report_symlink_is_refused(files, tmp_path):
    _, _, victim = files
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").symlink_to(victim)
    res = CliRunner().invoke(cli, ["evaluate", "--train-steps", "1", "--out", str(out), "-q"])
    _one_line(res, "out:", "report.json", "is a symbolic link")
    assert victim.read_text() == "precious"


def test_export_out_pointing_at_model_file_is_refused(files):
    model = files[0].parent / "m.safetensors"
    model.write_bytes(b"model bytes")
    res = CliRunner().invoke(cli, ["export", "-m", str(model), "-k", "2", "--out", str(model)])
    _one_line(res, "out:", "is an input of this command")
    assert model.read_bytes() == b"model bytes"


def test_atomic_write_refuses_links_and_inputs_including_hard_links(files, tmp_path):
    _, x, victim = files
    link = tmp_path / "l"
    link.symlink_to(victim)
    with pytest.raises(HgdefendError, match="symbolic link"):
        atomic_write(link, "x")
    hard = tmp_path / "hard.npy"
    os.link(x, hard)
    with pytest.raises(HgdefendError, match="is an input"):
        check_output(hard, refuse=[x])
    assert check_output(tmp_path / "new.txt", refuse=[x, None]) == tmp_path / "new.txt"
    atomic_write(tmp_path / "new.txt", "fine")
    assert (tmp_path / "new.txt").read_text() == "fine"


def test_symlink_planted_while_writing_is_refused_at_rename(files, tmp_path):
    _, _, victim = files
    dest = tmp_path / "out.bin"
    with pytest.raises(HgdefendError, match="symbolic link"):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"new")
            dest.symlink_to(victim)
    assert victim.read_text() == "precious" and not list(tmp_path.glob(".out.bin.*"))


CHILD = textwrap.dedent(
    """
    import sys, time
    import hgdefend.envelope as envelope
    from hgdefend.cli.main import main

    real = envelope.save_file

    def slow_save_file(tensors, filename, metadata):
        real(tensors, filename, metadata)
        print("WRITING", filename, flush=True)
        time.sleep(120)  # SIGTERM arrives here, the temporary file complete but not yet renamed

    envelope.save_file = slow_save_file
    sys.argv = ["hgdefend", *sys.argv[1:]]
    main()
    """
)


def test_sigterm_during_train_leaves_no_tmp_file(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--steps", "1", "--nets-per-step", "2", "--out", str(out), "-q", "--threads", "1"]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline()  # bounded: the child writes its checkpoint after one step
        assert line.startswith("WRITING"), (line, child.stderr.read() if child.poll() is not None else "")
        tmp = line.split()[1]
        assert os.path.exists(tmp) and os.path.basename(tmp).startswith(".checkpoint.safetensors.")
        child.send_signal(signal.SIGTERM)
        rc = child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert rc == 128 + signal.SIGTERM
    assert not os.path.exists(tmp)
    # nothing half-written, no temporary file (the folder lock is not an output)
    assert sorted(p.name for p in out.iterdir() if p.name != ".hgdefend.lock") == []
