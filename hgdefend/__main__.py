"""``python -m hgdefend ...``: the same as the ``hgdefend`` command."""

from .cli.main import main

if __name__ == "__main__":
    main()
