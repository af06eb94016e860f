"""``python -m hgdefend.cli ...`` (and ``torchrun -m hgdefend.cli ...``): the ``hgdefend`` command."""

from .main import main

if __name__ == "__main__":
    main()
