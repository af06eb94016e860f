"""``hgdefend`` command group. Each command is a thin shell over the library API.

Commands are imported only when they run (and each imports torch, scikit-learn, onnx ... only
inside its function), so ``hgdefend --help`` and ``hgdefend --version`` answer without loading them.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from .. import __version__

COMMANDS: dict[str, str] = {
    "train": "Train a HyperGAN on DATASET and save OUT/model.safetensors.",
    "evaluate": "Evaluate a HyperGAN ensemble and write report.html, report.md and report.json.",
    "info": "Show a model or .onnx file's SHA-256 and config, metadata or parameter counts.",
    "export": "Freeze K networks sampled from a model into one ONNX graph at OUT.",
    "detect": "Classify and score every input with an exported ensemble; flag suspicious ones.",
}
"""Command name (module ``hgdefend.cli.<name>``, function ``<name>``) → the first line of its help,
repeated here so that listing the commands imports none of them (tests check they agree)."""


class LazyGroup(click.Group):
    """A group whose commands are imported when invoked, not when the group is listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return getattr(importlib.import_module(f"{__package__}.{cmd_name}"), cmd_name)

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """As click's, but a usage error is one line (``error: ...``, exit 2) like every other error."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # `hgdefend` alone: the help, as click shows it
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            from ..text import printable

            click.echo(printable(f"error: {exc.format_message()}{where}"), err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl(list(COMMANDS.items()))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="hgdefend")
def cli() -> None:
    """Detect adversarial and out-of-distribution inputs with HyperGAN-sampled ensembles."""


def main() -> None:
    from ..fileio import install_signal_cleanup

    install_signal_cleanup()  # SIGTERM/SIGHUP: an interrupted write removes its temporary file
    cli(prog_name="hgdefend")


if __name__ == "__main__":
    main()
