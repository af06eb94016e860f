"""Strings from files are shown escaped, never raw (issue 17, item 5): escape sequences in a crafted
file cannot rewrite the terminal, reports or errors, and CSV cells cannot start a formula."""

import csv
import io
import json

import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from hgdefend import HyperGAN, save_model
from hgdefend.cli.detect import FIELDS
from hgdefend.cli.main import cli
from hgdefend.envelope import content_sha256
from hgdefend.evaluate.report import write_report
from hgdefend.targets import digits_small
from hgdefend.text import csv_cell, printable

FORGED = "\x1b[1A\x1b[2Ksha256     0000forged\u202e"


def _crafted_model(tmp_path):
    """A model file whose dataset name carries escape sequences, its digest recomputed (anyone who
    can write the file can)."""
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_model(
        path, HyperGAN(digits_small(), noise_dim=16, code_dim=8, hidden=32), dataset={"name": "digits"}
    )
    with safe_open(str(path), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["hgdefend_config"])
    config["dataset"]["name"] = FORGED
    meta["hgdefend_config"] = json.dumps(config)
    meta["content_sha256"] = content_sha256(config, tensors)
    out = tmp_path / "crafted.safetensors"
    save_file(tensors, str(out), meta)
    return out


def test_info_escape_sequences_cannot_forge_the_sha256_line(tmp_path):
    res = CliRunner().invoke(cli, ["info", "-m", str(_crafted_model(tmp_path))])
    assert "\x1b" not in res.output and "\u202e" not in res.output, res.output
    if res.exit_code == 0:  # shown, escaped
        assert "[1A" in res.output and "\\u202e" in res.output  # as \x1b or JSON's \u001b
    else:  # refused by the schema: the one-line error is escaped too
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("sha256")]
    assert len(lines) <= 1


def test_error_messages_escape_control_characters_in_paths(tmp_path):
    res = CliRunner().invoke(cli, ["info", "-m", str(tmp_path / "x\x1b[2Jy.safetensors")])
    assert res.exit_code == 2 and "\x1b" not in res.output and "\\x1b[2J" in res.output, res.output


def test_report_files_escape_control_characters(tmp_path):
    paths = write_report(tmp_path, {"title": FORGED}, f"# {FORGED}\n\ttable\n", f"<p>{FORGED}</p>\n")
    for kind in ("markdown", "html"):
        text = paths[kind].read_text()
        assert (
            "\x1b" not in text
            and "\u202e" not in text
            and "\\x1b[1A" in text
            and "\n\t" in text[:40] + "\n\t"
        )
    assert "\x1b" not in paths["json"].read_text()  # JSON escapes them itself (\u001b)


def test_printable_escapes_controls_and_keeps_ordinary_text():
    assert printable("é × — 日本") == "é × — 日本"
    assert printable("a\x07\x7f\x9b\u200b\u2028b") == "a\\x07\\x7f\\x9b\\u200b\\u2028b"
    assert printable("a\nb", keep="\n") == "a\nb" and printable("a\nb") == "a\\x0ab"


def test_csv_cells_starting_a_formula_are_neutralised():
    for bad in ('=HYPERLINK("http://x")', "+1", "-1+2", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(bad).startswith("'"), bad
    assert csv_cell(-0.5) == -0.5 and csv_cell(3) == 3 and csv_cell(True) is True and csv_cell("cat") == "cat"


def test_detect_csv_label_carrying_a_spreadsheet_formula_is_neutralised(monkeypatch):
    """detect's CSV writer passes every cell through csv_cell (labels come from the file)."""
    import hgdefend.cli.detect as detect

    row = {f: 0 for f in FIELDS} | {"label": "=cmd|' /C calc'!A0"}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writerow({k: ("" if v is None else csv_cell(v)) for k, v in row.items()})
    assert "'=cmd" in buf.getvalue()
    assert "csv_cell(v)" in open(detect.__file__).read()
