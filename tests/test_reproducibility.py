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


TIMES = ("seconds", "train_seconds", "created_utc")
"""The only report keys allowed to differ between identical runs: durations and the timestamp."""


def _without_times(node):
    if isinstance(node, dict):
        return {k: _without_times(v) for k, v in node.items() if k not in TIMES}
    if isinstance(node, list):
        return [_without_times(v) for v in node]
    return node


def test_two_evaluate_runs_with_the_same_seed_give_identical_report_json(tmp_path):
    """Training, both ensembles, the attack suite and a baseline, twice into one --out: report.json
    is identical apart from durations and the timestamp (and so is the model file it trained)."""
    args = ["evaluate", "--out", str(tmp_path / "r"), "--members", "8", "--train-steps", "5", "--seed", "2",
            "--attacks", "fgsm,pgd", "--attack-inputs", "20", "--attack-steps", "3", "--baselines", "single",
            "--device", "cpu", "--threads", "1", "--quiet", "--json"]  # fmt: skip
    reports, models = [], []
    for _ in range(2):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        reports.append(json.loads((tmp_path / "r" / "report.json").read_text()))
        models.append((tmp_path / "r" / "model.safetensors").read_bytes())
    assert reports[0]["meta"]["created_utc"] and "seconds" in reports[0]["meta"]
    assert json.dumps(_without_times(reports[0]), sort_keys=True) == json.dumps(
        _without_times(reports[1]), sort_keys=True
    )
    assert models[0] == models[1]
