"""Faults: a training run killed with SIGKILL resumes to the same bytes; two runs writing one folder
never mix (the second is refused while the first holds the folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from hgdefend.cli.main import cli
from hgdefend.fileio import FolderLock

TRAIN = [
    "train",
    "--steps",
    "300",
    "--checkpoint-every",
    "20",
    "--checkpoint-min-interval",  # a checkpoint every 20 steps, however fast they run
    "0",
    "--eval-every",
    "100",
    "--quiet",
    "--threads",
    "1",
    "--seed",
    "3",
]


def _hgdefend(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hgdefend", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_resume_after_sigkill_gives_the_same_model_bytes(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    ref = _hgdefend(*TRAIN, "--out", str(whole))
    assert ref.wait(timeout=300) == 0, ref.stderr.read()
    proc = _hgdefend(*TRAIN, "--out", str(killed))
    ckpt = killed / "checkpoint.safetensors"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the run finished before it could be killed")
    assert not (killed / "model.safetensors").exists()
    res = _hgdefend(*TRAIN, "--out", str(killed), "--resume")
    assert res.wait(timeout=300) == 0, res.stderr.read()
    assert (killed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()


def test_a_second_run_into_a_folder_being_written_is_refused(trained_digits, digits, tmp_path):
    from hgdefend import save_model

    model = tmp_path / "m.safetensors"
    save_model(model, trained_digits, dataset=digits.describe())
    out = tmp_path / "report"
    runner = CliRunner()
    evaluate = ["evaluate", "-m", str(model), "--members", "3", "--out", str(out), "-q", "--no-attacks"]
    with FolderLock(out) as held:  # another run is writing there
        held.acquire()
        res = runner.invoke(cli, [*evaluate, "--threads", "1"])
        assert res.exit_code == 2 and "another hgdefend run is writing" in res.output
        assert len(res.output.strip().splitlines()) == 1 and not (out / "report.json").exists()
        res = runner.invoke(cli, ["train", "--steps", "2", "--out", str(out), "-q", "--threads", "1"])
        assert res.exit_code == 2 and "another hgdefend run is writing" in res.output
    res = runner.invoke(cli, [*evaluate, "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert (out / "report.json").is_file()


def test_folder_lock_is_released_when_the_run_ends(tmp_path):
    with FolderLock(tmp_path / "x") as a:
        a.acquire()
        a.acquire()  # re-entrant within one run
    with FolderLock(tmp_path / "x") as b:
        b.acquire()
    assert os.path.exists(tmp_path / "x" / ".hgdefend.lock")
