"""Protect your own model: a HyperGAN over the *head* of a pretrained classifier.

:class:`HeadTarget` keeps a user's pretrained ``nn.Module`` frozen and generates only the
submodules the user names (``generate=["fc"]``). The frozen part runs once per input; the head runs
for K members in one ``torch.func.functional_call`` + ``vmap`` call. Sampled heads are offsets
around the user's own head, so the ensemble starts from the user's accuracy.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
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


def _check_names(module: nn.Module, names: list[str]) -> None:
    """Every name a submodule with parameters, none inside another."""
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


def _find_head(module: nn.Module, names: list[str]) -> tuple[nn.Module, nn.Module, str]:
    """(head, the module whose input is the head's input, prefix of head parameter names)."""
    if len(names) == 1:
        head = module.get_submodule(names[0])
        return head, head, names[0] + "."
    parents = {n.rpartition(".")[0] for n in names}
    parent = module.get_submodule(parents.pop()) if len(parents) == 1 else None
    if not isinstance(parent, nn.Sequential):
        return _traced_head(module, names)
    keys = list(parent._modules)
    first = min(keys.index(n.rpartition(".")[2]) for n in names)
    head = parent[first:]
    prefix = names[0].rpartition(".")[0]
    return head, parent[first], prefix + "." if prefix else ""


def _traced_head(module: nn.Module, names: list[str]) -> tuple[nn.Module, nn.Module, str]:
    """Several names that are not children of one ``nn.Sequential`` (``["layer4", "fc"]`` of a
    torchvision ResNet): trace the model with ``torch.fx`` (the named modules as leaves) and keep the
    graph from the first named module's call to the output, as a ``GraphModule`` sharing the model's
    submodules. Its only input is the first named module's input: a value computed earlier and used
    after it (a skip connection around the head) is refused."""
    import torch.fx

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return qualname in names or super().is_leaf_module(m, qualname)

    def refuse(why: str) -> HgdefendError:
        return HgdefendError(
            f"generate: several names {names} must be children of one nn.Sequential, or the end of a "
            f"model torch.fx can trace from the first of them to the output ({why}); otherwise name "
            "one module"
        )

    try:
        graph = _Tracer().trace(module)
    except Exception as exc:  # fx raises many types on untraceable forwards
        raise refuse(f"tracing failed: {type(exc).__name__}: {str(exc)[:120]}") from None
    nodes = list(graph.nodes)
    calls = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target in names]
    called = [nodes[i].target for i in calls]
    if sorted(called) != sorted(names):
        raise refuse(f"the forward calls {called}, each named module must be called exactly once")
    start = calls[0]
    entry = nodes[start]
    if len(entry.args) != 1 or entry.kwargs or not isinstance(entry.args[0], torch.fx.Node):
        raise refuse(f"{entry.target!r} must take one tensor input")
    tail = nodes[start:]
    inside = set(tail)
    new = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {entry.args[0]: new.placeholder("x")}
    for n in tail:
        for a in n.all_input_nodes:
            if a in inside or a in env:
                continue
            if a.op != "get_attr":
                raise refuse(f"{n.name!r} after {entry.target!r} uses {a.name!r}, computed before it")
            env[a] = new.node_copy(a, lambda v: env[v])
        env[n] = new.node_copy(n, lambda v: env[v])
    head = torch.fx.GraphModule(module, new, class_name="GeneratedHead")
    return head, module.get_submodule(str(entry.target)), ""


# --------------------------------------------------------------------------- compact parametrisations
COMPACT_MODES = ("full", "scales", "lowrank:R")
"""How a generated submodule's parameters are parametrised (``compact=``): ``"full"`` an offset per
parameter; ``"scales"`` a scale per output unit of each weight matrix/kernel; ``"lowrank:R"`` a
rank-R offset of each weight matrix/kernel. Vectors (biases, norm affine parameters) are full
offsets in every mode."""
MAX_RANK = 1024
_LOWRANK = re.compile(r"lowrank:([0-9]+)")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def check_compact_mode(mode: object, where: str = "compact") -> str:
    """``"full"``, ``"scales"`` or ``"lowrank:R"`` (1 ≤ R ≤ MAX_RANK), else one error naming ``where``."""
    if mode in ("full", "scales"):
        return str(mode)
    m = _LOWRANK.fullmatch(mode) if isinstance(mode, str) else None
    if m is not None and 1 <= int(m.group(1)) <= MAX_RANK:
        return f"lowrank:{int(m.group(1))}"
    raise HgdefendError(
        f"{where}: expected 'full', 'scales' or 'lowrank:R' with a rank R from 1 to {MAX_RANK}, got {mode!r}"
    )


def _compact_modes(compact: object, names: list[str]) -> dict[str, str]:
    """One mode per generated name: a string for all of them, or a mapping (names left out: full)."""
    if isinstance(compact, str):
        return {n: check_compact_mode(compact) for n in names}
    if isinstance(compact, Mapping):
        unknown = [k for k in compact if k not in names]
        if unknown:
            raise HgdefendError(f"compact: names {unknown} that generate does not ({names})")
        return {n: check_compact_mode(compact.get(n, "full"), f"compact[{n!r}]") for n in names}
    raise HgdefendError(
        f"compact: expected a mode ('full', 'scales', 'lowrank:R') or a mapping of generated names to "
        f"modes, got {type(compact).__name__}"
    )


def _rank(mode: str) -> int:
    return int(mode.partition(":")[2])


class _Compact(nn.Module):
    """A conv/linear layer of the user's whose weight stays frozen and whose members differ by
    generated per-output scales (``weight_scale``: ``x ↦ (W x)·(1+γ) + b``) or a low-rank offset
    (``weight_v`` [R, fan_in], ``weight_u`` [out, R]: ``x ↦ W x + b + U (V x)``, computed as a second,
    R-channel layer so no member's full weight is ever materialised). The generated tensors are
    non-persistent buffers (zero: the user's layer exactly), so ``functional_call`` swaps them and the
    model's ``state_dict`` is unchanged; ``weight`` and ``bias`` are the user's own parameters."""

    def __init__(self, base: nn.Module, mode: str) -> None:
        super().__init__()
        object.__setattr__(self, "_base", base)  # for its conv settings; not a submodule
        self.weight = base.weight
        self.bias = base.bias
        self.mode = mode
        w = base.weight
        if mode == "scales":
            self.register_buffer("weight_scale", torch.zeros(w.shape[0], device=w.device), persistent=False)
        else:
            fan = math.prod(w.shape[1:])
            r = min(_rank(mode), w.shape[0], fan)
            self.register_buffer("weight_v", torch.zeros(r, fan, device=w.device), persistent=False)
            self.register_buffer("weight_u", torch.zeros(w.shape[0], r, device=w.device), persistent=False)

    def _apply_weight(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if isinstance(self._base, nn.Linear):
            return F.linear(x, weight, bias)
        return self._base._conv_forward(x, weight, bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "scales":
            y = self._apply_weight(x, self.weight, None)
            # the output unit's axis: the last for a linear layer, the channel axis for a convolution
            unit = (-1,) if isinstance(self._base, nn.Linear) else (-1, *([1] * (y.dim() - 2)))
            y = y * (1 + self.weight_scale).view(unit)
            return y if self.bias is None else y + self.bias.view(unit)
        y = self._apply_weight(x, self.weight, self.bias)
        v = self.weight_v.view(-1, *self.weight.shape[1:])
        z = self._apply_weight(x, v, None)  # [.., R, *spatial]: the input on the R directions V
        if isinstance(self._base, nn.Linear):
            return y + z @ self.weight_u.t()
        return y + torch.einsum("or,br...->bo...", self.weight_u, z)


class _FrozenBatchNorm(nn.Module):
    """An eval-mode BatchNorm inside the generated part, written out elementwise
    (``(x - mean) / sqrt(var + eps) · w + b``) with the user's own tensors under the same names:
    the same function as torch's in eval mode, but one that ``vmap`` batches without reshaping by the
    batch size (torch's batching rule for ``batch_norm`` does, which fixes the batch of an ONNX
    export)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(bn, name))

    def forward(self, x: Tensor) -> Tensor:
        unit = (-1, *([1] * (x.dim() - 2)))  # the channel axis (the last for a [B, C] input)
        y = (x - self.running_mean.view(unit)) * torch.rsqrt(self.running_var + self.eps).view(unit)
        if self.weight is not None:
            y = y * self.weight.view(unit)
        return y if self.bias is None else y + self.bias.view(unit)


def _freeze_batchnorms(head: nn.Module) -> None:
    """Swap the head's BatchNorms that have running statistics for :class:`_FrozenBatchNorm`."""
    for q, m in list(head.named_modules()):
        if q and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            parent, _, leaf = q.rpartition(".")
            setattr(head.get_submodule(parent), leaf, _FrozenBatchNorm(m))


def _wrappable(m: nn.Module, mode: str) -> bool:
    """Layers :class:`_Compact` computes without materialising member weights: torch's own
    ``Linear``/``ConvNd`` forwards (subclasses that override ``forward`` are not), convolutions with
    one group for a low rank."""
    if isinstance(m, nn.Linear):
        return type(m).forward is nn.Linear.forward
    if isinstance(m, _CONVS):
        own = next(c for c in _CONVS if isinstance(m, c))
        return type(m).forward is own.forward and (mode == "scales" or m.groups == 1)
    return False


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
    evaluated for K members with ``functional_call`` + ``vmap`` on that input. Several names that are
    children of one ``nn.Sequential`` make the head that Sequential from the first of them to its
    end (e.g. ``["classifier.1", "classifier.4"]`` of a VGG-style classifier; unnamed children in
    between, such as activations, are part of the head, and their parameters stay frozen). Other
    names (``["layer4", "fc"]`` of a torchvision ResNet) are found by tracing the model with
    ``torch.fx``: the head is the traced forward from the first named module's call to the output
    (pooling and flattening in between included), provided it uses nothing computed before that
    call but that call's input. BatchNorms inside the head run as their eval-mode affine map.
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

    **Compact blocks** (``compact=``). Generating a whole block (ResNet-18's ``layer4``: 8.4 M
    parameters) as offsets makes each generator's last layer hidden × 8.4 M. ``compact="scales"``
    generates, per member, a scale γ per output unit of each weight matrix or kernel
    (``W·(1+γ)`` per output row: O(channels) numbers per layer); ``"lowrank:R"`` a rank-R offset
    ``U V`` of each (conv kernels flattened to ``[out, in·k·k]``). Vectors (biases, BatchNorm affine
    parameters) stay full offsets; BatchNorm running statistics stay frozen. All zero is the user's
    model exactly. Torch's own ``Linear``/``ConvNd`` layers that the forward calls compute this
    without materialising any member's weight (:class:`_Compact`: one shared convolution for all K
    members, then the scales, or a second rank-R convolution); other weight tensors (one a parent
    reads directly, as ``nn.MultiheadAttention`` reads ``out_proj.weight``) get their member weights
    written out. A mode for all names (``"scales"``) or per name (``{"layer4": "scales"}``; names
    left out: ``"full"``).

    :meth:`config` records the generated names, the compact modes (when not all ``"full"``) and
    :func:`backbone_sha256` of the
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
        compact: str | Mapping[str, str] = "full",
    ) -> None:
        if not isinstance(backbone, nn.Module):
            raise HgdefendError(f"backbone: expected a torch.nn.Module, got {type(backbone).__name__}")
        if task not in ("classification", "regression"):
            raise HgdefendError(f"task: expected 'classification' or 'regression', got {task!r}")
        self.generate = _names(generate)
        self.compact = _compact_modes(compact, self.generate)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.task = task
        self.name = name or type(backbone).__name__
        self.backbone_sha256 = backbone_sha256(backbone)
        self.module = copy.deepcopy(backbone).eval()
        for prm in self.module.parameters():
            prm.requires_grad_(False)
        _check_names(self.module, self.generate)
        wrapped = self._wrap_compact()
        self.head, self._entry, self._prefix = _find_head(self.module, self.generate)
        _freeze_batchnorms(self.head)
        # key of a generated tensor -> (how it makes the member's tensor, the head's name for that)
        self._rules: dict[str, tuple[str, str]] = {}
        groups: dict[str, dict[str, tuple[int, ...]]] = {}
        for n in self.generate:
            mode = self.compact[n]
            sub = self.module.get_submodule(n)
            for pname, prm in sub.named_parameters():
                owner, _, leaf = f"{n}.{pname}".rpartition(".")
                shapes = groups.setdefault(owner, {})
                key = param_key(owner, leaf)
                head_key = key[len(self._prefix) :]
                if mode == "full" or prm.dim() < 2:  # an offset per parameter
                    shapes[leaf] = tuple(prm.shape)
                    self._rules[key] = ("offset", head_key)
                elif owner in wrapped:  # the wrapper's buffers, swapped in as they are
                    if leaf != "weight":
                        raise HgdefendError(f"generate: {owner!r} has an unexpected parameter {leaf!r}")
                    for buf, t in wrapped[owner].named_buffers():
                        shapes[buf] = tuple(t.shape)
                        self._rules[param_key(owner, buf)] = ("buffer", head_key[: -len(leaf)] + buf)
                elif mode == "scales":  # materialised: W·(1+γ) per output row
                    shapes[f"{leaf}_scale"] = (prm.shape[0],)
                    self._rules[param_key(owner, f"{leaf}_scale")] = ("scale", head_key)
                else:  # materialised: W + U V
                    fan = math.prod(prm.shape[1:])
                    r = min(_rank(mode), prm.shape[0], fan)
                    shapes[f"{leaf}_v"], shapes[f"{leaf}_u"] = (r, fan), (prm.shape[0], r)
                    self._rules[param_key(owner, f"{leaf}_v")] = ("v", head_key)
                    self._rules[param_key(owner, f"{leaf}_u")] = ("u", head_key)
        self._groups = [ParamGroup(owner, shapes) for owner, shapes in groups.items() if shapes]
        self._keys = {k: rule[1] for k, rule in self._rules.items()}
        self.num_outputs = self._probe()

    def _probe_input(self) -> Tensor:
        x = torch.rand((2, *self.input_shape), generator=torch.Generator().manual_seed(0))
        return x.to(next(self.module.get_submodule(self.generate[0]).parameters()).device)

    def _run_model(self, x: Tensor) -> Any:
        try:
            with torch.no_grad():
                return self.module(x)
        except Exception as exc:
            raise HgdefendError(
                f"backbone: failed on a probe input of shape {list(x.shape)} ({type(exc).__name__}: {exc}); "
                "check input_shape"
            ) from exc

    def _wrap_compact(self) -> dict[str, _Compact]:
        """Swap the conv/linear layers of compact-generated submodules for :class:`_Compact` (only
        those the forward calls: a layer whose weight its parent reads directly, as in
        ``nn.MultiheadAttention``, keeps its module and has its member weights materialised)."""
        candidates = {f"{n}.{c}" if c else n: (m, self.compact[n])
                      for n in self.generate if self.compact[n] != "full"
                      for c, m in self.module.get_submodule(n).named_modules()
                      if _wrappable(m, self.compact[n])}  # fmt: skip
        if not candidates:
            return {}
        called: set[str] = set()
        handles = [m.register_forward_pre_hook(lambda *_, q=q: called.add(q))
                   for q, (m, _) in candidates.items()]  # fmt: skip
        try:
            self._run_model(self._probe_input())
        finally:
            for h in handles:
                h.remove()
        wrapped = {}
        for q, (m, mode) in candidates.items():
            if q in called:
                parent, _, leaf = q.rpartition(".")
                wrapped[q] = _Compact(m, mode)
                setattr(self.module.get_submodule(parent), leaf, wrapped[q])
        return wrapped

    # ------------------------------------------------------------------ the split
    def _probe(self) -> int:
        """Check on a probe input that the head's output is the model's output; return C."""
        calls: list[tuple[tuple, dict]] = []

        def record(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            calls.append((args, kwargs))

        handle = self._entry.register_forward_pre_hook(record, with_kwargs=True)
        try:
            out = self._run_model(self._probe_input())
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
            # recorded when used: files of fully generated heads are as before (absent: all "full")
            **({"compact": dict(self.compact)} if set(self.compact.values()) != {"full"} else {}),
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
        target = cls(module, cfg["generate"], cfg["input_shape"], cfg["task"], cfg["name"],
                     compact=cfg.get("compact", "full"))  # fmt: skip
        mine = target.config()
        for key in ("param_shapes", "num_outputs"):
            if mine[key] != cfg[key]:
                raise HgdefendError(f"module: its generated part's {key} do not match the model file's")
        return target

    def init_params(self, k: int, generator: torch.Generator | None = None) -> Params:
        """K offsets Δ: the pretrained head plus small noise (torch's initialisation × INIT_NOISE).
        Compact parametrisations: scales γ ~ U(±INIT_NOISE); low-rank factors U, V drawn so that
        U V has the spread of that noise."""
        out = {n: t * INIT_NOISE for n, t in _kaiming_init(self._groups, k, generator).items()}
        for key, (how, _) in self._rules.items():
            if how == "offset":
                continue
            t = torch.rand(out[key].shape, generator=generator) * 2 - 1
            if how == "scale" or key.endswith("weight_scale"):
                out[key] = t * INIT_NOISE
            else:  # entries of U V: R products of U(±a) draws, std a²√R/3; aim at INIT_NOISE·b/√3
                _, r, fan = out[key[: -len("_u")] + "_v"].shape  # V: [K, R, fan_in]
                a = math.sqrt(math.sqrt(3) * INIT_NOISE / math.sqrt(fan) / math.sqrt(r))
                out[key] = t * a
        return out

    def zero_offsets(self, k: int = 1) -> Params:
        """K copies of the user's own head (Δ = 0, γ = 0, U = V = 0):
        ``SampledEnsemble(target, target.zero_offsets())`` is the user's model, for baselines next to
        the HyperGAN's ensemble."""
        dev = next(self.head.parameters()).device
        return {param_key(g.name, p): torch.zeros((int(k), *s), device=dev)
                for g in self._groups for p, s in g.shapes.items()}  # fmt: skip

    def head_params(self, params: Params) -> Params:
        """What ``functional_call`` swaps into the head for each member, keyed as the head module
        names them: ``W_pretrained + Δ`` for offsets; a :class:`_Compact` layer's scales or low-rank
        factors as they are; and for other compact weights, the member weight ``W·(1+γ)`` or
        ``W + U V``."""
        pre = dict(self.head.named_parameters())
        out: Params = {}
        for n, d in params.items():
            how, key = self._rules[n]
            if how == "offset":
                out[key] = pre[key] + d
            elif how == "buffer":
                out[key] = d
            elif how == "scale":
                w = pre[key]
                out[key] = w * (1 + d.view(*d.shape, *([1] * (w.dim() - 1))))
            elif how == "u":
                v = params[n[: -len("_u")] + "_v"]
                out[key] = pre[key] + (d @ v).view(d.shape[0], *pre[key].shape)
        return out

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
