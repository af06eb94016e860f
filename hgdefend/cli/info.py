"""``hgdefend info``: what a model file holds, without running it."""

from __future__ import annotations

import json
import math

import click

from .common import friendly_errors


@click.command()
@click.option(
    "--model",
    "-m",
    required=True,
    type=click.Path(dir_okay=False),
    help="A model file from `hgdefend train` (or `evaluate`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON only.")
@friendly_errors
def info(model: str, as_json: bool) -> None:
    """Show a model file's config, SHA-256 and parameter counts."""
    from ..io import load_model

    loaded = load_model(model)
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
    out = {"path": loaded.path, "sha256": loaded.sha256, "parameters": counts, "diversity": diversity,
           "config": loaded.config}  # fmt: skip
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    cfg = loaded.config
    click.echo(f"model      {loaded.path}")
    click.echo(f"sha256     {loaded.sha256}")
    click.echo(f"format     {cfg['format']} v{cfg['format_version']} (hgdefend {cfg['library_version']})")
    click.echo(f"target     {cfg['target']['name']} input {cfg['target']['input_shape']} "
               f"({counts['target_network']:,} parameters per sampled network)")  # fmt: skip
    click.echo(f"hypergan   {json.dumps(cfg['hypergan'])}")
    click.echo("diversity  " + ("not recorded (no training recipe in the file)" if diversity is None else
                                f"{diversity['objective']} (weight {diversity['weight']:g})"))  # fmt: skip
    click.echo(f"parameters mixer {counts['mixer']:,}, generators {counts['generators']:,}, "
               f"discriminator {counts['discriminator']:,}")  # fmt: skip
    if cfg.get("dataset"):
        click.echo(f"dataset    {json.dumps(cfg['dataset'])}")
    if cfg.get("training"):
        click.echo(f"training   {json.dumps(cfg['training'])}")
