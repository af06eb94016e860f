"""``hgdefend`` command group. Each command is a thin shell over the library API."""

from __future__ import annotations

import click

from .. import __version__
from .detect import detect
from .evaluate import evaluate
from .export import export
from .info import info
from .train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hgdefend")
def cli() -> None:
    """Detect adversarial and out-of-distribution inputs with HyperGAN-sampled ensembles."""


cli.add_command(train)
cli.add_command(evaluate)
cli.add_command(info)
cli.add_command(export)
cli.add_command(detect)


def main() -> None:
    cli(prog_name="hgdefend")


if __name__ == "__main__":
    main()
