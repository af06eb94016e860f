"""Identical seeds give byte-identical model files: wall-clock times live in the training log."""

import json

from click.testing import CliRunner

from hgdefend.cli.main import cli


def test_identical_seeds_give_byte_identical_model_files(tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        res = CliRunner().invoke(cli, ["train", "--out", str(out), "--steps", "6", "--quiet", "--seed", "3",
                                       "--eval-every", "3", "--device", "cpu", "--threads", "1"])  # fmt: skip
        assert res.exit_code == 0, res.output
        runs.append(out)
    a, b = ((r / "model.safetensors").read_bytes() for r in runs)
    assert a == b
    log = json.loads((runs[0] / "train_log.json").read_text())
    assert log["seconds"] >= 0 and "seconds" in log["history"][-1]  # the times are in the log
