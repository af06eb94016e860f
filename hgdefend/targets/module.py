"""Any user ``torch.nn.Module`` classifier as a target, and rebuilding a target from a model file."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .head import HeadTarget
from .layers import ParamGroup, Params, Strategy, Target, _kaiming_init, num_members, param_key
from .spec import TargetSpec
from .strategy import _precision, mode_of, resolve_strategy


class ModuleTarget:
    """Any ``nn.Module`` as a target: its parameters are generated, its buffers kept fixed.

    One generator per submodule that owns parameters. Evaluated for K members with
    ``torch.func.functional_call`` under ``vmap``. Model files store only the parameter shapes;
    loading needs the same module class from the user (no code is ever loaded from a file).
    """

    def __init__(
        self,
        module: nn.Module,
        input_shape: Sequence[int],
        task: Literal["classification", "regression"] = "classification",
        name: str | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ValueError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        self.module = copy.deepcopy(module).eval()
        for prm in self.module.parameters():
            prm.requires_grad_(False)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.task = task
        self.name = name or type(module).__name__
        groups: dict[str, dict[str, tuple[int, ...]]] = {}
        for pname, prm in self.module.named_parameters():
            owner, _, leaf = pname.rpartition(".")
            groups.setdefault(owner, {})[leaf] = tuple(prm.shape)
        if not groups:
            raise ValueError("module: has no parameters to generate")
        self._groups = [ParamGroup(owner, shapes) for owner, shapes in groups.items()]
        with torch.no_grad():
            out = self.module(torch.zeros(1, *self.input_shape))
        if out.dim() != 2:
            raise ValueError(f"module: must return [B, C] outputs, got shape {list(out.shape)}")
        self.num_outputs = int(out.shape[1])

    @property
    def param_groups(self) -> list[ParamGroup]:
        return self._groups

    def config(self) -> dict[str, Any]:
        return {
            "kind": "module",
            "name": self.name,
            "input_shape": list(self.input_shape),
            "task": self.task,
            "num_outputs": self.num_outputs,
            "param_shapes": {
                param_key(g.name, p): list(s) for g in self._groups for p, s in g.shapes.items()
            },
        }

    def init_params(self, k: int, generator: torch.Generator | None = None) -> Params:
        return _kaiming_init(self._groups, k, generator)

    def forward(
        self, params: Params, x: Tensor, *, strategy: Strategy = "auto", dropout: bool = False
    ) -> Tensor:
        """Logits ``[K, B, C]``. Any kernel but ``loop`` runs as ``vmap`` (a module has no grouped
        form); precision modifiers apply, ``cl`` / ``compile`` / ``graph`` are ignored here."""
        plan = resolve_strategy(strategy, x.device, mode_of(params))
        self.module.train(dropout)
        try:
            buffers = dict(self.module.named_buffers())
            if plan.precision == "bf16":
                x = x.to(torch.bfloat16)
                params = {n: t.to(torch.bfloat16) for n, t in params.items()}
                buffers = {n: b.to(torch.bfloat16) if b.is_floating_point() else b
                           for n, b in buffers.items()}  # fmt: skip

            def one(p: Params) -> Tensor:
                return torch.func.functional_call(self.module, {**p, **buffers}, (x,))

            with _precision(plan, x.device):
                if plan.kernel == "loop":
                    k = num_members(params)
                    out = torch.stack([one({n: t[i] for n, t in params.items()}) for i in range(k)])
                else:
                    out = torch.func.vmap(one, randomness="different" if dropout else "error")(params)
            return out.float() if plan.precision == "bf16" else out
        finally:
            self.module.eval()

    def to(self, device: torch.device | str) -> ModuleTarget:
        self.module.to(device)
        return self


def target_from_config(cfg: dict[str, Any], module: nn.Module | None = None) -> Target:
    """Rebuild a target from a model file's config; a module target needs the user's module, a head
    target the user's pretrained model (:meth:`~hgdefend.targets.head.HeadTarget.from_config`)."""
    kind = cfg.get("kind")
    if kind == "spec":
        return TargetSpec.from_config(cfg)
    if kind == "head":
        return HeadTarget.from_config(cfg, module)
    if kind == "module":
        if module is None:
            raise ValueError(
                f"module: this model file was trained on a user module ({cfg.get('name')!r}); "
                "pass the same nn.Module class instance to load it"
            )
        target = ModuleTarget(module, cfg["input_shape"], cfg["task"], cfg["name"])
        got = target.config()["param_shapes"]
        if got != cfg["param_shapes"]:
            raise ValueError("module: its parameter shapes do not match the model file's")
        return target
    raise ValueError(f"target config: unknown kind {kind!r}")
