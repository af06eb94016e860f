"""``hgdefend info``: what a model file or an exported ``.onnx`` file holds, without running it."""

from __future__ import annotations

import json
import math

import click

from .common import CLIError, backbone_options, echo, friendly_errors, load_cli_model


@click.command()
@click.option(
    "--model",
    "-m",
    required=True,
    type=click.Path(dir_okay=False),
    help="A model file from `hgdefend train` (or `evaluate`), or an .onnx file from `hgdefend export`.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
@backbone_options()
@friendly_errors
def info(model: str, as_json: bool, backbone: str | None, backbone_weights: str | None) -> None:
    """Show a model or .onnx file's SHA-256 and config, metadata or parameter counts.

    For an .onnx file: the file's SHA-256 (pin it with `detect --expected-sha256`), the embedded
    digest, K, seed, score, threshold, inputs and outputs; an altered file is refused.
    """
    if model.lower().endswith(".onnx"):
        if backbone is not None or backbone_weights is not None:
            raise CLIError("--backbone: an .onnx file holds the whole graph; leave it out")
        _onnx_info(model, as_json)
        return
    loaded = load_cli_model(model, backbone, backbone_weights)
    hg = loaded.hypergan
    counts = {
        "mixer": sum(p.numel() for p in hg.mixer.parameters()) if hg.mixer is not None else 0,
        "generators": sum(p.numel() for p in hg.generators.parameters()),
        "discriminator": sum(p.numel() for p in hg.discriminator.parameters())
        if hg.discriminator is not None
        else 0,
        "target_network": sum(math.prod(s) for g in hg.groups for s in g.shapes.values()),
    }
    recipe = (loaded.config.get("training") or {}).get("recipe") or {}
    diversity = ({"objective": recipe["diversity"], "weight": recipe.get("diversity_weight")}
                 if "diversity" in recipe else None)  # fmt: skip
    adversarial = None
    if recipe.get("adversarial", "none") != "none":
        keys = ("adversarial", "adv_eps", "adv_steps", "adv_alpha", "trades_beta", "adv_eps_warmup")
        adversarial = {k: recipe.get(k) for k in keys}
    elif "diversity" in recipe:  # a recipe written before adversarial training existed means none
        adversarial = {"adversarial": "none"}
    out = {"path": loaded.path, "sha256": loaded.sha256, "parameters": counts, "diversity": diversity,
           "adversarial": adversarial, "config": loaded.config}  # fmt: skip
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    cfg = loaded.config
    echo(f"model      {loaded.path}")
    echo(f"sha256     {loaded.sha256}")
    echo(f"format     {cfg['format']} v{cfg['format_version']} (hgdefend {cfg['library_version']})")
    echo(f"target     {cfg['target']['name']} input {cfg['target']['input_shape']} "
               f"({counts['target_network']:,} parameters per sampled network)")  # fmt: skip
    t = cfg["target"]
    if t["kind"] == "head":
        modes = t.get("compact") or {}
        generated = ", ".join(
            f"{n} ({modes[n]})" if modes.get(n, "full") != "full" else n for n in t["generate"]
        )
        echo(f"backbone   sha256 {t['backbone_sha256']} (your pretrained model, frozen; "
             f"generated: {generated}, as offsets around its weights)")  # fmt: skip
    echo(f"hypergan   {json.dumps(cfg['hypergan'])}")
    echo("diversity  " + ("not recorded (no training recipe in the file)" if diversity is None else
                                f"{diversity['objective']} (weight {diversity['weight']:g})"))  # fmt: skip
    echo("adv. train " + _adversarial_line(adversarial))
    echo(f"parameters mixer {counts['mixer']:,}, generators {counts['generators']:,}, "
               f"discriminator {counts['discriminator']:,}")  # fmt: skip
    if cfg.get("dataset"):
        echo(f"dataset    {json.dumps(cfg['dataset'])}")
    if cfg.get("training"):
        echo(f"training   {json.dumps(cfg['training'])}")


def _adversarial_line(adv: dict | None) -> str:
    if adv is None:
        return "not recorded (no training recipe in the file)"
    if adv["adversarial"] == "none":
        return "none (plain training)"
    line = f"{adv['adversarial']} at L∞ eps {adv['adv_eps']:g}"
    if adv["adversarial"] != "fgsm":
        line += f", {adv['adv_steps']} steps"
    if adv["adversarial"] == "trades":
        line += f", beta {adv['trades_beta']:g}"
    if adv.get("adv_eps_warmup"):
        line += f", eps warmed up over {adv['adv_eps_warmup']} steps"
    return line


def _onnx_info(path: str, as_json: bool) -> None:
    from ..export.fileformat import DIGEST_KEY, OUTPUT_DESCRIPTIONS, read_file

    _, meta, sha = read_file(path)
    outputs = json.loads(meta["outputs"])
    out = {
        "path": path,
        "sha256": sha,
        "content_sha256": meta[DIGEST_KEY],
        "format": f"{meta['hgdefend_format']} v{meta['hgdefend_format_version']}",
        "members": int(meta["members"]),
        "seed": int(meta["seed"]) if meta.get("seed") else None,
        "score": meta["score"],
        "threshold": float(meta["threshold"]) if meta["threshold"] else None,
        "target_fpr": float(meta["target_fpr"]) if meta.get("target_fpr") else None,
        "threshold_source": meta.get("threshold_source"),
        "input": {
            "name": meta.get("input_name", "x"),
            "shape": ["B", *json.loads(meta["input_shape"])],
            "dtype": meta.get("input_dtype", "float32"),
            "range": json.loads(meta["input_range"]),
        },
        "outputs": {name: OUTPUT_DESCRIPTIONS.get(name, "") for name in outputs},
        "metadata": meta,
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    thr = "none (no is_adversarial output)" if out["threshold"] is None else (
        f"{out['threshold']:.6g} on {out['score']} ({meta.get('threshold_source', '')})")  # fmt: skip
    echo(f"onnx       {path}")
    echo(f"sha256     {sha}  (pin with detect --expected-sha256)")
    echo(f"digest     {DIGEST_KEY} {meta[DIGEST_KEY]} (verified: graph and metadata unchanged)")
    tools = f"exporter {meta.get('exporter')}, kernel {meta.get('kernel')}, opset {meta.get('opset')}"
    echo(f"format     {out['format']} (hgdefend {meta.get('library_version')}, {tools})")
    echo(f"members    K = {out['members']}, seed {out['seed']}")
    echo(f"threshold  {thr}")
    echo(f"input      {out['input']['name']} {out['input']['dtype']} {out['input']['shape']} "
               f"range {out['input']['range']}; invalid inputs: {meta.get('invalid_inputs')}")  # fmt: skip
    echo(f"classes    {meta.get('class_labels')}")
    echo(f"source     {meta.get('source_model_path') or '—'} ({meta.get('source_model_sha256_of')} "
               f"sha256 {meta.get('source_model_sha256')})")  # fmt: skip
    echo("outputs")
    for name, text in out["outputs"].items():
        echo(f"  {name:<26} {text}")
