"""The paper-reproduction benchmarks run end to end on tiny cases (``--quick``), and the paper's
Figure 2 claim holds for the library at the default recipe: the ±3 std band of 100 sampled networks
is wider outside the training data than inside it."""

import json
import math
import subprocess

import pytest
import torch

from hgdefend import load_data
from hgdefend.ensemble import SampledEnsemble
from hgdefend.recipes import default_recipe, train_model
from tests.conftest import run_benchmark


def test_paper_regression_quick_writes_the_figure_and_band_widths(tmp_path):
    d = json.loads(
        run_benchmark("paper_regression.py", "--quick", "--threads", "1", "--out-dir", str(tmp_path))
    )
    png = tmp_path / "paper_regression.png"
    assert d["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < 200_000
    assert d["training"]["steps"] == 20 and d["training"]["recipe"]["regulariser"] == "gan"
    assert [r["members"] for r in d["sizes"]] == [10, 100, 1000]
    for r in d["sizes"]:
        assert 0 < r["band_width_inside"] and 0 < r["band_width_outside"]
        assert math.isclose(r["outside_over_inside"], r["band_width_outside"] / r["band_width_inside"])
        assert math.isfinite(r["train_mse"]) and 0 <= r["true_curve_in_band_outside"] <= 1
    assert set(d["band_widens_outside"]) == {"10", "100", "1000"}
    assert {"device", "device_name", "torch", "date_utc", "default_recipe_steps"} <= set(d)


def test_band_is_wider_outside_the_data_than_inside_at_the_default_recipe():
    """The paper's Figure 2 (section 4.3) on the library itself: 2,000 steps, seconds on one CPU thread.

    Any ReLU network's spread grows with |x| somewhat, so the check also asks that the ensemble fit
    the data (an untrained HyperGAN's band widens too, with a training MSE in the hundreds)."""
    data = load_data("cubic")
    steps = default_recipe(data)[1].steps
    hg = train_model(data, seed=0, device="cpu", progress=False).hypergan
    sampled = hg.ensemble(100, seed=0)
    ens = SampledEnsemble(sampled.target, sampled.params, value_range=data.value_range)
    x = torch.linspace(-6, 6, 241).unsqueeze(1)
    pred = ens.member_logits(x).squeeze(-1)
    width = 6 * pred.std(0)
    inside = x[:, 0].abs() <= 4
    assert steps == 2000
    assert width[~inside].mean() > width[inside].mean()
    train_mse = float(((ens.member_logits(data.train.x).squeeze(-1).mean(0) - data.train.y) ** 2).mean())
    assert train_mse < 2 * 3.0**2  # within twice the noise variance: the mean fits the 20 points


def test_paper_weight_norms_quick_has_every_ablation_row(tmp_path):
    out = tmp_path / "norms.json"
    d = json.loads(run_benchmark("paper_weight_norms.py", "--quick", "--threads", "1", "--out", str(out)))
    assert d["benchmark"] == "paper_weight_norms" and d["dataset"] == "digits"
    assert {"device", "device_name", "torch", "date_utc", "seconds"} <= set(d)
    rows = {r["setting"]: r for r in d["rows"]}
    assert list(rows) == ["hypergan", "no-mixer", "no-discriminator", "neither", "standard"]
    expected = {"hypergan": (True, "gan"), "no-mixer": (False, "gan"), "no-discriminator": (True, "none"),
                "neither": (False, "none")}  # fmt: skip
    for name, (mixer, reg) in expected.items():
        r = rows[name]
        assert r["settings"] == {"kind": "hypergan", "mixer": mixer, "regulariser": reg, "beta": 1.0}
        recipe = r["training"]["recipe"]  # what was trained, not only what was asked
        assert (recipe["mixer"], recipe["regulariser"]) == (mixer, reg)
        assert r["members"] == 100
    assert rows["standard"]["settings"] == {"kind": "standard"} and rows["standard"]["members"] == 10
    for r in rows.values():
        assert r["training"]["steps"] == 30
        assert [e["layer"] for e in r["layers"]] == ["Conv1", "Conv2", "Linear"]
        for e in r["layers"]:
            assert e["mean_norm"] > 0 and e["std_norm"] > 0
            assert math.isclose(e["var_norm"], e["std_norm"] ** 2)
        assert 0 <= r["ensemble_accuracy"] <= 1
        assert 0 <= r["single_network_accuracy_min"] <= r["single_network_accuracy_mean"] <= 1

    # the table: the paper's numbers (MNIST only) beside ours, quoted, and no number where the text has none
    d["dataset"] = "mnist"
    out.write_text(json.dumps(d))
    table = run_benchmark("paper_weight_norms.py", "--table", str(out))
    assert "7.49 / 1.59 (σ²)" in table and "10.79 / 0.58 (σ²)" in table and "27.05 / 0.31 (σ²)" in table
    assert "Table 1" in table and "Table 3" in table and "99.31 %" in table
    no_mixer_paper = table.splitlines()[5]  # the paper's line under "no mixer": not in the text
    assert no_mixer_paper.count("not in the paper's text") == 5


def test_paper_table2_quick_has_every_size_seed_and_method(tmp_path):
    import statistics

    out = tmp_path / "table2.json"
    d = json.loads(run_benchmark("paper_table2.py", "--quick", "--threads", "1", "--out", str(out)))
    assert d["benchmark"] == "paper_table2" and d["complete"] and d["dataset_name"] == "digits"
    assert {"device", "device_name", "torch", "date_utc", "seconds"} <= set(d)
    runs = d["runs"]
    keys = {(r["dataset"], r["method"], r["seed"]) for r in runs}
    assert keys == {(s, m, seed) for s in ("full", "300") for m in ("hypergan", "deep-ensemble", "mc-dropout")
                    for seed in (0, 1)}  # fmt: skip
    for r in runs:
        assert r["training"]["steps"] == 60 and r["training"]["seconds"] >= 0
        assert r["train_size"] == (300 if r["dataset"] == "300" else len(load_data("digits").train))
        assert r["members"] == (10 if r["method"] == "deep-ensemble" else 100)
        s = r["single"]
        assert 0 <= s["min"] <= s["mean"] <= s["max"] <= 1 and s["std"] >= 0
        assert set(r["ensembles"]) == {"1", "5", "10", "100"}
        for n, acc in r["ensembles"].items():
            if r["method"] == "deep-ensemble" and n == "100":
                assert acc is None and n not in r["disjoint_groups"]
                continue
            assert 0 <= acc <= 1
            g = r["disjoint_groups"][n]
            assert g["groups"] == r["members"] // int(n) and 0 <= g["mean"] <= 1
        # one network's "ensemble" is that network: within the single-network range
        assert s["min"] <= r["ensembles"]["1"] <= s["max"]
        assert math.isclose(r["disjoint_groups"]["1"]["mean"], s["mean"], abs_tol=1e-9)
        if r["method"] == "mc-dropout":
            assert 0 <= r["dropout_off_accuracy"] <= 1
    assert len(d["summary"]) == 6
    for row in d["summary"]:
        rs = [r for r in runs if (r["dataset"], r["method"]) == (row["dataset"], row["method"])]
        assert row["seeds"] == [0, 1] == [r["seed"] for r in rs]
        for n, agg in row["ensembles"].items():
            if agg is None:
                assert row["method"] == "deep-ensemble" and n == "100"
                continue
            vals = [r["ensembles"][n] for r in rs]
            assert math.isclose(agg["mean"], statistics.fmean(vals)) and agg["n"] == 2
            assert math.isclose(agg["std"], statistics.stdev(vals))
        singles = [r["single"]["mean"] for r in rs]
        assert math.isclose(row["single_mean"]["mean"], statistics.fmean(singles))
        assert math.isclose(row["single_mean"]["std"], statistics.stdev(singles))

    # the table merges files (seeds run apart) and refuses a run twice; the paper's numbers are beside
    part = tmp_path / "part.json"
    part.write_text(json.dumps({**d, "runs": [r for r in runs if r["seed"] == 1]}))
    first = tmp_path / "first.json"
    first.write_text(json.dumps({**d, "runs": [r for r in runs if r["seed"] == 0]}))
    merged = run_benchmark("paper_table2.py", "--table", str(first), str(part))
    assert merged == run_benchmark("paper_table2.py", "--table", str(out))
    assert "| digits 300 (300) | deep-ensemble | 60 | 0, 1 |" in merged and "n/a" in merged
    with pytest.raises(subprocess.CalledProcessError):
        run_benchmark("paper_table2.py", "--table", str(out), str(part))
    for r in d["runs"]:
        r["dataset"] = "5000" if r["dataset"] == "300" else r["dataset"]
    d["dataset_name"] = "mnist"
    out.write_text(json.dumps(d))
    table = run_benchmark("paper_table2.py", "--table", str(out))
    assert "98.64 / 98.75 / 99.22 / 99.31 %" in table and "96.69 / 97.24 / 97.33 / 97.71 %" in table
    assert "99.30 % (cited method)" in table and "95.58 % (cited method)" in table


def test_paper_ood_quick_draws_the_cdfs_and_scores_every_method(tmp_path):
    import statistics

    out = tmp_path / "ood.json"
    d = json.loads(run_benchmark("paper_ood.py", "--quick", "--threads", "1", "--out-dir", str(tmp_path),
                                 "--out", str(out)))  # fmt: skip
    png = tmp_path / "paper_ood.png"
    assert d["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert d["benchmark"] == "paper_ood" and {"device", "device_name", "torch", "date_utc"} <= set(d)
    rows = d["rows"]
    assert [(r["method"], r["seed"]) for r in rows] == [
        (m, s) for s in (0, 1) for m in ("hypergan", "deep-ensemble", "mc-dropout")
    ]
    for r in rows:
        assert r["protocol"] == "heldout" and r["training"]["steps"] == 60
        assert r["members"] == (10 if r["method"] == "deep-ensemble" else 20)
        assert 0 <= r["ensemble_accuracy"] <= 1
        for s in ("entropy", "mutual_information", "max_prob", "variance"):
            assert 0 <= r["scores"][s]["auroc"] <= 1
        e = r["ecdf"]
        assert math.isclose(e["grid_max"], math.log(5)) and e["points"] == 51
        for split in ("test", "ood"):
            cdf = e[split]
            assert len(cdf) == 51 and sorted(cdf) == cdf and cdf[-1] == 1.0
            assert 0 <= r["entropy_median"][split] <= math.log(5) + 1e-6
    for s in d["summary"]:
        rs = [r for r in rows if r["method"] == s["method"]]
        vals = [r["scores"]["entropy"]["auroc"] for r in rs]
        assert math.isclose(s["auroc"]["entropy"]["mean"], statistics.fmean(vals))
        assert math.isclose(s["auroc"]["entropy"]["std"], statistics.stdev(vals))
    table = run_benchmark("paper_ood.py", "--table", str(out))
    assert table.count("| heldout |") == 3 and "no AUROC or other number" in table
    with pytest.raises(subprocess.CalledProcessError):
        run_benchmark("paper_ood.py", "--table", str(out), str(out))


def test_paper_adversarial_quick_has_transfer_and_detection_per_size(tmp_path):
    out = tmp_path / "adv.json"
    args = ("--quick", "--threads", "1", "--out-dir", str(tmp_path), "--out", str(out))
    d = json.loads(run_benchmark("paper_adversarial.py", *args))
    assert d["benchmark"] == "paper_adversarial" and d["dataset"] == "digits"
    for name in ("detection", "transfer"):
        png = tmp_path / f"paper_adversarial_{name}.png"
        assert d["plots"][name] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {m: t["steps"] for m, t in d["training"].items()} == {"hypergan": 60, "deep-ensemble": 60}

    # Figure 4: every attack and eps, for the HyperGAN (30 fresh judges) and the deep ensemble (9)
    transfer = {(r["method"], r["attack"], r["eps"]): r for r in d["transfer"]}
    assert set(transfer) == {(m, a, e) for m in ("hypergan", "deep-ensemble") for a in ("fgsm", "pgd")
                             for e in (0.1, 0.3)}  # fmt: skip
    for (method, attack, _), r in transfer.items():
        assert r["judges"] == (30 if method == "hypergan" else 9) and r["inputs"] == 40
        assert 0 <= r["source_fooled"] <= r["source_correct"] <= 40
        assert sum(r["histogram"]) == r["source_fooled"] and r["mean_linf"] <= r["eps"] + 1e-6
        if r["source_fooled"]:
            assert 0 <= r["transfer_rate"] <= 1 and 0 <= r["share_fooling_all_judges"] <= 1
        if attack == "pgd":  # the same PGD through hgdefend.attacks.transfer_rate gives the same number
            assert math.isclose(r["library_transfer_rate"], r["transfer_rate"], abs_tol=1e-6)

    # Figure 5: ensembles of 5 and 10, every attack × protocol × eps, HyperGAN and the deep ensemble
    assert [s["members"] for s in d["detection"]] == [5, 10]
    assert d["detection"][0]["sanity"]["params"]["steps"] == 5
    for s in d["detection"]:
        assert [m["name"] for m in s["methods"]] == ["hypergan", "deep-ensemble"]
        hg, deep = s["methods"]
        assert hg["scoring_ensemble"]["members"] == s["members"] == deep["scoring_ensemble"]["members"]
        assert hg["scoring_ensemble"]["seed"] != hg["attacked_ensemble"]["seed"]  # a fresh ensemble judges
        for m in s["methods"]:
            keys = [(r["attack"], r["protocol"], r["eps"]) for r in m["rows"]]
            grid = [
                (a, p, e) for a in ("fgsm", "pgd") for p in ("paper", "fixed", "adaptive") for e in (0.1, 0.3)
            ]
            assert sorted(keys) == sorted(grid)
            for r in m["rows"]:
                assert 0 <= r["tpr_at_threshold"] <= 1 and 0 <= r["auroc"] <= 1
                assert 0 <= r["missed_and_wrong"] <= 1 - r["tpr_at_threshold"] + 1e-9
                assert r["mean_linf"] <= r["eps"] + 1e-6
                if r["protocol"] == "adaptive":
                    assert [x["lam"] for x in r["lambda_sweep"]] == [0.0, 1.0]
    table = run_benchmark("paper_adversarial.py", "--table", str(out))
    assert "50-70 %" in table and table.count("| 10 | hypergan |") == 12 and "over 97%" in table
    with pytest.raises(subprocess.CalledProcessError):
        run_benchmark("paper_adversarial.py", "--table", str(out), str(out))
