"""``HyperGANClassifier``: the ART ``PyTorchClassifier`` over a HyperGAN's sampled ensemble, with
inputs and labels checked by name before ART sees them."""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from torch import Tensor, nn

from ..data import Split
from ..ensemble import SampledEnsemble
from ..hypergan import HyperGAN, make_generator
from ..training import TrainConfig, Trainer, TrainResult
from ..validation import HgdefendError, check_k
from .modules import DEFAULT_MEMBERS, DetectorLogits, EnsembleLogits, MemberLogits, check_sample_mode


def _probe_logits(module: EnsembleLogits, input_shape: tuple[int, ...]) -> None:
    """Reject target networks that output probabilities: they would be log-softmaxed again and
    every score computed from them would be silently wrong."""
    device = next(iter(module.member_logits.bank.values())).device
    probe = torch.rand(4, *input_shape, generator=make_generator(0)).to(device)
    with torch.no_grad():
        out = module.member_logits(probe)
    if bool((out >= 0).all()) and bool(torch.allclose(out.sum(-1), torch.ones_like(out[..., 0]), atol=1e-4)):
        raise HgdefendError(
            "model: the target network outputs probabilities (non-negative rows summing to 1); "
            "hgdefend needs logits — remove the final softmax from the network"
        )


DEFAULT_CLIP_VALUES = (0.0, 1.0)
"""``clip_values`` when none is given: the input range of hgdefend's classification data (images
scaled to [0, 1]); pass your own for other inputs."""


# --------------------------------------------------------------------------- the ART estimator
class HyperGANClassifier(PyTorchClassifier):
    """An ART ``PyTorchClassifier`` over a HyperGAN's sampled ensemble.

    ``model`` is a trained :class:`~hgdefend.HyperGAN` (or an :class:`EnsembleLogits`, which is what
    ART's cloning passes back). ``loss``, ``input_shape`` and ``nb_classes`` default to
    cross-entropy and the target's shapes; the rest of the positional signature is
    ``PyTorchClassifier``'s, so ART can clone it. ``clip_values`` defaults to
    :data:`DEFAULT_CLIP_VALUES` (the data's [0, 1]), so attacks stay in range and the detector flags
    inputs outside it. Keyword-only extras: ``members`` (K, default 10),
    ``sample_mode`` (``"fixed"`` bank, the default, or ``"fresh"`` weights per call), ``seed`` (of
    the bank and of the fresh stream) and ``train_config`` (used by :meth:`fit`). ``optimizer`` is
    accepted for signature compatibility only: :meth:`fit` trains with the HyperGAN objective and
    its own optimisers.
    """

    estimator_params = PyTorchClassifier.estimator_params + ["members", "sample_mode", "seed", "train_config"]

    def __init__(
        self,
        model: HyperGAN | EnsembleLogits,
        loss: nn.modules.loss._Loss | None = None,
        input_shape: tuple[int, ...] | None = None,
        nb_classes: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        use_amp: bool = False,
        opt_level: str = "O1",
        loss_scale: float | str | None = "dynamic",
        channels_first: bool = True,
        clip_values: Any = None,
        preprocessing_defences: Any = None,
        postprocessing_defences: Any = None,
        preprocessing: Any = (0.0, 1.0),
        device_type: str = "gpu",
        *,
        members: int | None = None,
        sample_mode: str | None = None,
        seed: int | None = 0,
        train_config: TrainConfig | None = None,
    ) -> None:
        if clip_values is None and isinstance(model, HyperGAN):
            # the range every hgdefend classification model is trained and checked on; without it
            # ART's attacks leave the range and the detector cannot tell out-of-range inputs
            clip_values = DEFAULT_CLIP_VALUES
        if isinstance(model, HyperGAN):
            if model.target.task != "classification":
                raise HgdefendError(
                    f"model: ART classifiers need a classification target, got {model.target.task}"
                )
            k = check_k(DEFAULT_MEMBERS if members is None else members, "members")
            bank = model.sample_frozen(k, seed=seed)
            module = EnsembleLogits(MemberLogits(model.target, bank, model, seed=seed,
                                                 mode=check_sample_mode(sample_mode or "fixed")))  # fmt: skip
        elif isinstance(model, EnsembleLogits):
            module = model
            if members is not None and check_k(members, "members") != module.member_logits.members:
                module.member_logits.resample(seed, members)
            if sample_mode is not None:
                module.member_logits.mode = check_sample_mode(sample_mode)
        else:
            raise HgdefendError(
                f"model: expected a trained hgdefend.HyperGAN (or EnsembleLogits), got {type(model).__name__}"
            )
        target = module.member_logits.target
        own_shape = tuple(int(s) for s in target.input_shape)
        if input_shape is not None and tuple(int(s) for s in input_shape) != own_shape:
            raise HgdefendError(
                f"input_shape: the model's target takes {list(own_shape)}, got {list(input_shape)}"
            )
        n_out = target.num_outputs + (1 if isinstance(module.logits, DetectorLogits) else 0)
        if nb_classes is not None and int(nb_classes) != n_out:
            raise HgdefendError(f"nb_classes: the model outputs {n_out} classes, got {nb_classes}")
        if not channels_first:
            raise HgdefendError("channels_first: hgdefend targets take channels-first inputs [B, C, H, W]")
        _probe_logits(module, own_shape)
        self._train_config = train_config if train_config is not None else TrainConfig()
        super().__init__(
            module, loss if loss is not None else nn.CrossEntropyLoss(), own_shape, n_out, optimizer,
            use_amp, opt_level, loss_scale, channels_first, clip_values, preprocessing_defences,
            postprocessing_defences, preprocessing, device_type,
        )  # fmt: skip

    # ------------------------------------------------------------------ parameters (ART get/set_params)
    @property
    def _members_module(self) -> MemberLogits:
        return self.model.member_logits

    @property
    def hypergan(self) -> HyperGAN | None:
        return self._members_module.hypergan

    @property
    def members(self) -> int:
        return self._members_module.members

    @members.setter
    def members(self, k: int) -> None:
        if check_k(k, "members") != self.members:
            self._members_module.resample(self.seed, k)

    @property
    def sample_mode(self) -> str:
        return self._members_module.mode

    @sample_mode.setter
    def sample_mode(self, mode: str) -> None:
        if check_sample_mode(mode) == "fresh" and self.hypergan is None:
            raise HgdefendError("sample_mode: 'fresh' needs a HyperGAN to draw weights from")
        self._members_module.mode = mode

    @property
    def seed(self) -> int | None:
        return self._members_module.seed

    @seed.setter
    def seed(self, seed: int | None) -> None:
        if seed != self.seed:
            self.resample(seed)

    @property
    def train_config(self) -> TrainConfig:
        return self._train_config

    @train_config.setter
    def train_config(self, cfg: TrainConfig) -> None:
        if not isinstance(cfg, TrainConfig):
            raise HgdefendError(f"train_config: expected a hgdefend.TrainConfig, got {type(cfg).__name__}")
        self._train_config = cfg

    def resample(self, seed: int | None) -> HyperGANClassifier:
        """Draw a new frozen bank of ``members`` weight sets from ``seed`` (and restart fresh mode)."""
        self._members_module.resample(seed)
        return self

    def ensemble(self) -> SampledEnsemble:
        """The current frozen bank as a :class:`SampledEnsemble` (for hgdefend's own tools)."""
        return self._members_module.ensemble()

    # ------------------------------------------------------------------ input checks
    def _check_x(self, x: Any, name: str = "x", *, finite: bool = True) -> np.ndarray | Tensor:
        """float32 of shape ``[B, *input_shape]``; float64 is converted, the rest is rejected by name
        (ART itself fails deep inside torch on these). ``finite=False`` lets NaN and ±inf through, for
        the detector, which flags such inputs one by one."""
        shape = tuple(self.input_shape)
        if isinstance(x, Tensor):
            if not x.is_floating_point():
                raise HgdefendError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
            arr_shape = tuple(x.shape)
        else:
            if not isinstance(x, np.ndarray):
                raise HgdefendError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
            if not np.issubdtype(x.dtype, np.floating):
                raise HgdefendError(
                    f"{name}: expected floating-point values, got dtype {x.dtype} "
                    "(scale integer images yourself, e.g. x.astype(np.float32) / 255)"
                )
            arr_shape = x.shape
        if len(arr_shape) != len(shape) + 1 or tuple(arr_shape[1:]) != shape:
            want = f"[B, {', '.join(map(str, shape))}]"
            hint = ""
            if tuple(arr_shape) == shape:
                hint = " (a single example: add a batch axis, x[None])"
            elif len(arr_shape) == len(shape) + 1 and tuple(arr_shape[1:]) == shape[1:] + shape[:1]:
                hint = " (channels-last: transpose to channels-first)"
            raise HgdefendError(f"{name}: expected shape {want}, got {list(arr_shape)}{hint}")
        if arr_shape[0] == 0:
            raise HgdefendError(f"{name}: is empty (batch size 0)")
        if isinstance(x, Tensor):
            if finite and not bool(torch.isfinite(x).all()):
                raise HgdefendError(f"{name}: contains NaN or infinite values")
            return x.float() if x.dtype != torch.float32 else x
        if finite and not np.isfinite(x).all():
            raise HgdefendError(f"{name}: contains NaN or infinite values")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _check_y(self, y: Any, n: int, name: str = "y") -> np.ndarray | Tensor:
        """One-hot float32 ``[n, C]``. Index labels are converted (ART 1.20's ``loss_gradient``
        raises on them); logits or probabilities passed as labels are rejected."""
        c = self.nb_classes
        is_tensor = isinstance(y, Tensor)
        arr = y.detach().cpu().numpy() if is_tensor else np.asarray(y)
        if arr.ndim == 2 and arr.shape[1] == 1 and c > 1:
            arr = arr[:, 0]
        if arr.shape[:1] != (n,):
            raise HgdefendError(f"{name}: expected {n} labels (one per input), got shape {list(arr.shape)}")
        if arr.ndim == 1:
            if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
                raise HgdefendError(f"{name}: expected integer class labels, got dtype {arr.dtype}")
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise HgdefendError(f"{name}: expected integer class indices, got non-integer values")
            if arr.min() < 0 or arr.max() >= c:
                raise HgdefendError(
                    f"{name}: class indices must lie in [0, {c - 1}], got {arr.min()}..{arr.max()}"
                )
            out = np.eye(c, dtype=np.float32)[arr.astype(np.int64)]
        elif arr.ndim == 2 and arr.shape[1] == c:
            out = arr.astype(np.float32)
            if (
                not np.all(np.isfinite(out))
                or out.min() < 0
                or out.max() > 1
                or not np.allclose(out.sum(1), 1, atol=1e-3)
            ):
                raise HgdefendError(
                    f"{name}: rows must be one-hot labels (or probabilities summing to 1); these look like "
                    "model outputs (logits) — pass class indices, e.g. np.argmax(pred, axis=1)"
                )
        else:
            raise HgdefendError(
                f"{name}: expected class indices [{n}] or one-hot labels [{n}, {c}], got {list(arr.shape)}"
            )
        return torch.from_numpy(out).to(y.device) if is_tensor else out

    # ------------------------------------------------------------------ ART API with checked inputs
    def predict(
        self, x: np.ndarray, batch_size: int = 128, training_mode: bool = False, **kwargs: Any
    ) -> np.ndarray:
        return super().predict(self._check_x(x), batch_size=batch_size, training_mode=training_mode, **kwargs)

    def loss_gradient(self, x: Any, y: Any, training_mode: bool = False, **kwargs: Any) -> Any:
        x = self._check_x(x)
        return super().loss_gradient(x, self._check_y(y, len(x)), training_mode=training_mode, **kwargs)

    def compute_loss(self, x: Any, y: Any, reduction: str = "none", **kwargs: Any) -> Any:
        x = self._check_x(x)
        return super().compute_loss(x, self._check_y(y, len(x)), reduction=reduction, **kwargs)

    def class_gradient(self, x: Any, label: Any = None, training_mode: bool = False, **kwargs: Any) -> Any:
        return super().class_gradient(self._check_x(x), label=label, training_mode=training_mode, **kwargs)

    def get_activations(
        self, x: Any, layer: int | str | None = None, batch_size: int = 128, framework: bool = False
    ) -> Any:
        """Outputs of a named layer, always 2-D ``[B, features]`` as ART's activation-based detectors
        (``SubsetScanningDetector``, ``BinaryActivationDetector``) need: ``"member_logits"`` flattened
        to ``[B, K * C]`` (member ``k``'s logits are columns ``k*C : (k+1)*C``; ``.reshape(B, K, C)``
        recovers them) or ``"logits"`` ``[B, C]`` (an index into :attr:`layer_names` works too)."""
        names = self.layer_names
        if (
            isinstance(layer, (int, np.integer))
            and not isinstance(layer, bool)
            and -len(names) <= layer < len(names)
        ):
            layer = names[int(layer)]
        if layer not in names:
            raise HgdefendError(f"layer: expected one of {names} (or their index), got {layer!r}")
        out = super().get_activations(self._check_x(x), layer, batch_size=batch_size, framework=framework)
        return out.reshape(out.shape[0], -1) if layer == "member_logits" else out

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int = 128,
        nb_epochs: int = 10,
        training_mode: bool = True,
        drop_last: bool = False,
        scheduler: Any = None,
        verbose: bool = False,
        **kwargs: Any,
    ) -> None:
        """Train the HyperGAN with its own objective (:class:`hgdefend.Trainer`), then redraw the bank.

        ``nb_epochs × ceil(len(x) / batch_size)`` steps of ``batch_size`` images, the other settings
        from ``train_config``; pass ``config=TrainConfig(...)`` to set everything yourself.
        ``training_mode``/``drop_last`` do not apply; a ``scheduler`` is rejected (the schedule is
        ``TrainConfig.lr_schedule``). The :class:`~hgdefend.training.TrainResult` is kept in
        ``training_result_``.
        """
        config = kwargs.pop("config", None)
        if kwargs:
            raise HgdefendError(f"fit: unexpected arguments {sorted(kwargs)}")
        if scheduler is not None:
            raise HgdefendError(
                "scheduler: HyperGAN training uses TrainConfig.lr_schedule, not a torch scheduler"
            )
        if self.hypergan is None:
            raise HgdefendError("fit: this estimator holds a fixed bank without a HyperGAN to train")
        x = self._check_x(x)
        if isinstance(x, Tensor):
            x = x.detach().cpu().numpy()
        labels = np.argmax(self._check_y(y, len(x)), axis=1)
        if config is None:
            if int(batch_size) < 1 or int(nb_epochs) < 1:
                raise HgdefendError(
                    f"batch_size, nb_epochs: expected integers >= 1, got {batch_size}, {nb_epochs}"
                )
            steps = int(nb_epochs) * math.ceil(len(x) / int(batch_size))
            config = dataclasses.replace(self._train_config, steps=steps, batch_size=int(batch_size))
        elif not isinstance(config, TrainConfig):
            raise HgdefendError(f"config: expected a hgdefend.TrainConfig, got {type(config).__name__}")
        x_pre, _ = self._apply_preprocessing(x, y=None, fit=True)
        train = Split(
            torch.from_numpy(np.ascontiguousarray(x_pre, dtype=np.float32)), torch.from_numpy(labels)
        )
        trainer = Trainer(self.hypergan, train, config, device=self._device, progress=verbose)
        self.training_result_: TrainResult = trainer.fit()
        self.resample(self.seed)

    def reset(self) -> None:
        """Re-initialise the HyperGAN (refit from scratch) and redraw the bank from it."""
        super().reset()
        if self.hypergan is not None:
            self.resample(self.seed)

    def clone_for_refitting(self) -> HyperGANClassifier:
        """An untrained copy with the same architecture and settings (no optimizer needed: :meth:`fit`
        brings its own)."""
        model = copy.deepcopy(self.model)
        opt = None
        if self._optimizer is not None:
            opt = type(self._optimizer)(model.parameters(), **self._optimizer.defaults)
        clone = type(self)(model, self._loss, self.input_shape, self.nb_classes, optimizer=opt)
        clone.reset()
        params = self.get_params()
        del params["model"], params["optimizer"]
        clone.set_params(**params)
        return clone

    def __getstate__(self) -> dict[str, Any]:
        """Copy/pickle in memory. ART's own ``__getstate__`` writes model files into ``~/.art/data``
        and never deletes them (AutoAttack's parallel mode deep-copies the estimator)."""
        state = self.__dict__.copy()
        state["_inner_module"] = state.pop("_model")._model
        state.pop("_model_wrapper", None)
        state["_device"] = str(state["_device"])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        inner = state.pop("_inner_module")
        device = torch.device(state.pop("_device"))
        if device.type == "cuda" and not torch.cuda.is_available():
            device = torch.device("cpu")
        self.__dict__.update(state)
        self._device = device
        self._model = self._make_model_wrapper(inner)
        self._model.to(device)
