"""Protect your own model: a HyperGAN over the *head* of a pretrained classifier.

:class:`HeadTarget` keeps a user's pretrained ``nn.Module`` frozen and generates only the
submodules the user names (``generate=["fc"]``). The frozen part runs once per input; the head runs
for K members in one ``torch.func.functional_call`` + ``vmap`` call. Sampled heads are offsets
around the user's own head, so the ensemble starts from the user's accuracy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..envelope import tensors_sha256
from ..errors import HgdefendError
from .layers import ParamGroup, Params, Strategy, _kaiming_init, num_members, param_key
from .strategy import _precision, mode_of, resolve_strategy

INIT_NOISE = 0.1
""":meth:`HeadTarget.init_params` draws Δ as torch's default layer initialisation × this."""
_PROBE_ATOL = 1e-4


class _Captured(Exception):  # noqa: N818 (control flow, not an error)
    """Stops the user's forward once the head's input is known (nothing after it is computed)."""


def backbone_sha256(module: nn.Module) -> str:
    """SHA-256 over the module's ``state_dict`` (sorted names, dtypes, shapes and bytes): the
    fingerprint a model file keeps of the pretrained model its heads are offsets of."""
    return tensors_sha256(module.state_dict())


def _names(generate: Sequence[str] | str) -> list[str]:
    names = [generate] if isinstance(generate, str) else list(generate) if generate is not None else []
    if not names or not all(isinstance(n, str) and n for n in names):
        raise HgdefendError(
            f"generate: expected a list of submodule names like ['fc'] or ['classifier.6'], got {generate!r}"
        )
    if len(set(names)) != len(names):
        raise HgdefendError(f"generate: names a submodule twice: {names}")
    return names


def _find_head(module: nn.Module, names: list[str]) -> tuple[nn.Module, nn.Module, str]:
    """(head, the module whose input is the head's input, prefix of head parameter names)."""
    children = [n for n, _ in module.named_modules() if n]
    for n in names:
        try:
            sub = module.get_submodule(n)
        except AttributeError:
            tail = ", ".join(repr(c) for c in children[-6:])
            raise HgdefendError(
                f"generate: the model has no submodule {n!r} (its last submodules: {tail})"
            ) from None
        if not any(True for _ in sub.parameters()):
            raise HgdefendError(f"generate: submodule {n!r} has no parameters to generate")
    for a in names:
        for b in names:
            if a != b and b.startswith(a + "."):
                raise HgdefendError(f"generate: {b!r} lies inside {a!r}; name one of them")
    if len(names) == 1:
        head = module.get_submodule(names[0])
        return head, head, names[0] + "."
    parents = {n.rpartition(".")[0] for n in names}
    parent = module.get_submodule(parents.pop()) if len(parents) == 1 else None
    if not isinstance(parent, nn.Sequential):
        raise HgdefendError(
            f"generate: several names {names} must be children of one nn.Sequential (the head is "
            "that Sequential from the first named child to its end); otherwise name one module"
        )
    keys = list(parent._modules)
    first = min(keys.index(n.rpartition(".")[2]) for n in names)
    head = parent[first:]
    prefix = names[0].rpartition(".")[0]
    return head, parent[first], prefix + "." if prefix else ""


class HeadTarget:
    """A pretrained classifier whose head is generated and whose other layers stay frozen.

    ``backbone``: the user's whole pretrained model (input → logits ``[B, C]``); it is copied, its
    parameters frozen, and it always runs in eval mode (BatchNorm uses its running statistics and
    never updates them). ``generate``: the submodules whose parameters are generated, e.g.
    ``["fc"]`` for a torchvision ResNet or ``["3"]`` for the last layer of an ``nn.Sequential``.

    **How the split is found.** The generated submodule must be the *last* thing the model's forward
    applies: its output is the model's output. The frozen part is everything before it; its output
    is the generated submodule's input, captured with a forward pre-hook that then stops the model's
    forward (nothing after the head is computed, the frozen part runs once). The head is then
    evaluated for K members with ``functional_call`` + ``vmap`` on that input. Several names must be
    children of one ``nn.Sequential``, and the head is that Sequential from the first of them to its
    end (e.g. ``["classifier.1", "classifier.4"]`` of a VGG-style classifier; unnamed children in
    between, such as activations, are part of the head, and their parameters stay frozen).
    Construction checks this on a probe input: the head applied to the captured input must give the
    model's output, else one :class:`HgdefendError` explains the restriction. Models that post-process
    the head's output (``return self.fc(x) * self.temperature``) are refused: move that into the head
    module or into the frozen part. Gradients w.r.t. the inputs flow through the frozen part, so
    attacks see the whole model.

    **Offsets around the user's weights.** The parameters the HyperGAN generates (and that
    :data:`~hgdefend.targets.Params` hold) are offsets Δ, and a member's head weight is
    ``W_pretrained + Δ``. A zero Δ is the user's model exactly, so the ensemble starts from the
    user's accuracy instead of from random heads, and training only has to learn how the members
    should differ, not the task again (generating the weights themselves would throw the user's
    head away and retrain it from noise). A freshly initialised HyperGAN already emits small Δ
    (measured: about 1/6 of the pretrained weights' spread for a digits CNN's and a ResNet-18's
    ``fc``), so its members start at the user's accuracy. :meth:`init_params` (deep ensembles,
    single networks) gives the pretrained head plus small noise: Δ is torch's default layer
    initialisation × :data:`INIT_NOISE`.

    :meth:`config` records the generated names and :func:`backbone_sha256` of the
    pretrained model (the head's pretrained weights included: the offsets mean nothing without
    them); :meth:`from_config` refuses a model whose weights differ. A model file holds only the
    HyperGAN; loading needs the same pretrained model (``load_model(path, module=model)``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        generate: Sequence[str] | str,
        input_shape: Sequence[int],
        task: Literal["classification", "regression"] = "classification",
        name: str | None = None,
    ) -> None:
        if not isinstance(backbone, nn.Module):
            raise HgdefendError(f"backbone: expected a torch.nn.Module, got {type(backbone).__name__}")
        if task not in ("classification", "regression"):
            raise HgdefendError(f"task: expected 'classification' or 'regression', got {task!r}")
        self.generate = _names(generate)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.task = task
        self.name = name or type(backbone).__name__
        self.backbone_sha256 = backbone_sha256(backbone)
        self.module = copy.deepcopy(backbone).eval()
        for prm in self.module.parameters():
            prm.requires_grad_(False)
        self.head, self._entry, self._prefix = _find_head(self.module, self.generate)
        groups: dict[str, dict[str, tuple[int, ...]]] = {}
        for n in self.generate:
            for pname, prm in self.module.get_submodule(n).named_parameters():
                owner, _, leaf = f"{n}.{pname}".rpartition(".")
                groups.setdefault(owner, {})[leaf] = tuple(prm.shape)
        self._groups = [ParamGroup(owner, shapes) for owner, shapes in groups.items()]
        self._keys = {param_key(g.name, p): param_key(g.name, p)[len(self._prefix) :]
                      for g in self._groups for p in g.shapes}  # fmt: skip
        self.num_outputs = self._probe()

    # ------------------------------------------------------------------ the split
    def _probe(self) -> int:
        """Check on a probe input that the head's output is the model's output; return C."""
        calls: list[tuple[tuple, dict]] = []

        def record(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            calls.append((args, kwargs))

        x = torch.rand((2, *self.input_shape), generator=torch.Generator().manual_seed(0))
        x = x.to(next(self.head.parameters()).device)
        handle = self._entry.register_forward_pre_hook(record, with_kwargs=True)
        try:
            with torch.no_grad():
                out = self.module(x)
        except Exception as exc:
            raise HgdefendError(
                f"backbone: failed on a probe input of shape {list(x.shape)} ({type(exc).__name__}: {exc}); "
                "check input_shape"
            ) from exc
        finally:
            handle.remove()
        if not isinstance(out, Tensor) or out.dim() != 2:
            got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise HgdefendError(f"backbone: must return [B, C] outputs, got {got}")
        if len(calls) != 1:
            raise HgdefendError(
                f"generate: the model applies {self.generate[0]!r} {len(calls)} times per forward; "
                "the generated head must run exactly once, last"
            )
        with torch.no_grad():
            head_out = self.head(*calls[0][0], **calls[0][1])
        if (
            not isinstance(head_out, Tensor)
            or head_out.shape != out.shape
            or not torch.allclose(head_out, out, atol=_PROBE_ATOL, rtol=_PROBE_ATOL)
        ):
            raise HgdefendError(
                f"generate: {self.generate} is not the end of the model: applied to its own input it "
                "does not give the model's output. The generated submodules must be the last ones the "
                "forward applies, with nothing after them (name the final layer, e.g. ['fc'], or "
                "several children at the end of one nn.Sequential)"
            )
        return int(out.shape[1])

    def features(self, x: Tensor) -> tuple[tuple, dict]:
        """The frozen part on ``x``: the head's input (args, kwargs), differentiable w.r.t. ``x``."""
        captured: list[tuple[tuple, dict]] = []

        def stop(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append((args, kwargs))
            raise _Captured

        self.module.eval()
        handle = self._entry.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            self.module(x)
        except _Captured:
            pass
        finally:
            handle.remove()
        if not captured:
            raise HgdefendError(f"backbone: its forward did not reach {self.generate[0]!r}")
        return captured[0]

    # ------------------------------------------------------------------ Target protocol
    @property
    def param_groups(self) -> list[ParamGroup]:
        return self._groups

    def config(self) -> dict[str, Any]:
        return {
            "kind": "head",
            "name": self.name,
            "input_shape": list(self.input_shape),
            "task": self.task,
            "num_outputs": self.num_outputs,
            "generate": list(self.generate),
            "backbone_sha256": self.backbone_sha256,
            "param_shapes": {
                param_key(g.name, p): list(s) for g in self._groups for p, s in g.shapes.items()
            },
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any], module: nn.Module | None) -> HeadTarget:
        """Rebuild from a model file's target config with the user's pretrained ``module``; refuse
        a module whose weights are not the ones the file was trained on."""
        if module is None:
            raise HgdefendError(
                f"module: this model file protects a pretrained model ({cfg.get('name')!r}, generating "
                f"{cfg.get('generate')}); pass that model (same weights) as module= to load it"
            )
        got = backbone_sha256(module) if isinstance(module, nn.Module) else None
        if got != cfg["backbone_sha256"]:
            raise HgdefendError(
                f"module: is not the pretrained model this file was trained on (weights SHA-256 "
                f"{str(got)[:16]}…, the file's {str(cfg['backbone_sha256'])[:16]}…); the generated heads "
                "are offsets of that model's weights, so pass the same model with the same weights"
            )
        target = cls(module, cfg["generate"], cfg["input_shape"], cfg["task"], cfg["name"])
        mine = target.config()
        for key in ("param_shapes", "num_outputs"):
            if mine[key] != cfg[key]:
                raise HgdefendError(f"module: its generated part's {key} do not match the model file's")
        return target

    def init_params(self, k: int, generator: torch.Generator | None = None) -> Params:
        """K offsets Δ: the pretrained head plus small noise (torch's initialisation × INIT_NOISE)."""
        return {n: t * INIT_NOISE for n, t in _kaiming_init(self._groups, k, generator).items()}

    def zero_offsets(self, k: int = 1) -> Params:
        """K copies of the user's own head (Δ = 0): ``SampledEnsemble(target, target.zero_offsets())``
        is the user's model, for baselines next to the HyperGAN's ensemble."""
        dev = next(self.head.parameters()).device
        return {param_key(g.name, p): torch.zeros((int(k), *s), device=dev)
                for g in self._groups for p, s in g.shapes.items()}  # fmt: skip

    def head_params(self, params: Params) -> Params:
        """Member head weights ``W_pretrained + Δ``, keyed as the head module names them."""
        pre = dict(self.head.named_parameters())
        return {self._keys[n]: pre[self._keys[n]] + d for n, d in params.items()}

    def forward(
        self, params: Params, x: Tensor, *, strategy: Strategy = "auto", dropout: bool = False
    ) -> Tensor:
        """Logits ``[K, B, C]``: the frozen part once, then the K heads in one ``vmap`` call (the
        ``loop`` kernel: one head at a time; every other kernel runs as ``vmap``, and precision
        modifiers apply, ``bf16`` to the head only). ``dropout`` turns on the head's dropout layers
        (the frozen part always runs in eval mode)."""
        plan = resolve_strategy(strategy, x.device, mode_of(params))
        with _precision(plan, x.device):
            args, kwargs = self.features(x)
            full = self.head_params(params)
            frozen: dict[str, Tensor] = {}
            if plan.precision == "bf16":  # the head only; the frozen part runs once, in float32
                args, kwargs, full = _to_bf16(args), _to_bf16(kwargs), _to_bf16(full)
                own = {**dict(self.head.named_parameters()), **dict(self.head.named_buffers())}
                frozen = _to_bf16({n: t for n, t in own.items() if n not in full})
            drops = [m for m in self.head.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
            for m in drops:
                m.train(dropout)
            try:

                def one(p: Params) -> Tensor:
                    return torch.func.functional_call(self.head, {**frozen, **p}, args, kwargs)

                if plan.kernel == "loop":
                    k = num_members(full)
                    out = torch.stack([one({n: t[i] for n, t in full.items()}) for i in range(k)])
                else:
                    out = torch.func.vmap(one, randomness="different" if dropout else "error")(full)
            finally:
                for m in drops:
                    m.eval()
        return out.float() if plan.precision == "bf16" else out

    def to(self, device: torch.device | str) -> HeadTarget:
        self.module.to(device)
        return self


def _to_bf16(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(torch.bfloat16) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _to_bf16(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_bf16(v) for v in obj)
    return obj
