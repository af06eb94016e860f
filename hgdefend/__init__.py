"""hgdefend: detect adversarial and out-of-distribution inputs with HyperGAN-sampled ensembles.

Data flows one way: data → HyperGAN → sampled ensemble → scores → detector → report / export.
"""

__version__ = "0.1.0"

from .data import DataSplits, Split, load_data  # noqa: E402
from .ensemble import SampledEnsemble, diversity  # noqa: E402
from .hypergan import HyperGAN  # noqa: E402
from .io import load_model, save_model  # noqa: E402
from .targets import ModuleTarget, TargetSpec  # noqa: E402
from .training import TrainConfig, Trainer  # noqa: E402
from .validation import HgdefendError  # noqa: E402

__all__ = [
    "DataSplits",
    "HgdefendError",
    "HyperGAN",
    "ModuleTarget",
    "SampledEnsemble",
    "Split",
    "TargetSpec",
    "TrainConfig",
    "Trainer",
    "__version__",
    "diversity",
    "load_data",
    "load_model",
    "save_model",
]
