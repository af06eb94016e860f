"""Training: the HyperGAN objective, and plain member training for the baselines.

Every step draws its randomness (noise, minibatch, prior samples) from a generator seeded by
``(seed, step)``, so a run resumed from a checkpoint continues exactly as an uninterrupted one.

Learning-rate schedule: ``cosine`` anneals to 0 over ``steps`` (torch's ``CosineAnnealingLR``).
With ``time_budget_s`` it anneals over whichever runs out first: its progress is
``max(step / steps, elapsed / time_budget_s)``, so a run that the budget stops early still ends
at a learning rate near 0. ``elapsed`` counts training time recorded in the checkpoint, so a
resumed run continues the same schedule and the budget covers the whole training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from . import rng
from .adversarial import adversarial_loss, check_adversarial
from .data import Split
from .distributed import Distributed
from .diversity import check_diversity, diversity_loss
from .ensemble import SampledEnsemble
from .graphed_step import GraphedStep, check_graphable
from .hypergan import HyperGAN, make_generator
from .io import load_checkpoint, save_checkpoint
from .probabilities import predict
from .targets import Params, Target, mc_dropout_variant, parse_strategy
from .validation import HgdefendError


@dataclass
class TrainConfig:
    """Hyper-parameters. Defaults follow the official code except the learning rates, which are
    raised (1e-4 → 1e-3) so that small CPU runs converge in a few hundred steps."""

    steps: int = 1000
    nets_per_step: int = 32
    batch_size: int = 64
    lr: float = 1e-3
    lr_mixer: float = 1e-3
    lr_discriminator: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    lr_schedule: str = "cosine"  # or "constant"
    pretrain_max_steps: int = 300
    eval_every: int = 0  # 0: only at the end
    eval_members: int = 10
    checkpoint_every: int = 0
    # skip a scheduled checkpoint while the last one is younger than this (seconds of training): on a
    # fast GPU, 100 steps take under a second and the MNIST checkpoint holds ~200 MB
    checkpoint_min_interval_s: float = 0.0
    time_budget_s: float | None = None  # stop after this much training time; the schedule follows it
    seed: int = 0
    strategy: str = "auto"  # member-evaluation strategy (hgdefend.targets.parse_strategy)
    diversity: str = "none"  # an objective from hgdefend.diversity, added with diversity_weight
    diversity_weight: float = 0.0
    adversarial: str = "none"  # train on inputs crafted against each step's networks (hgdefend.adversarial)
    adv_eps: float = 0.3  # L∞ budget of those inputs
    adv_steps: int = 7  # PGD / TRADES steps (FGSM takes one)
    adv_alpha: float | None = None  # step size; None: 2.5·eps/steps (PGD, TRADES), 1.25·eps (FGSM)
    trades_beta: float = 6.0  # TRADES' weight of the clean–adversarial KL term
    # steps over which the adversarial eps ramps linearly up to adv_eps (0: the full eps from the
    # first step, which made PGD- and FGSM-trained HyperGANs collapse onto one class on MNIST)
    adv_eps_warmup: int = 0
    cuda_graph: bool = False  # capture the plain step as one CUDA graph (hgdefend.graphed_step)

    def __post_init__(self) -> None:
        for name in ("steps", "nets_per_step", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise HgdefendError(f"{name}: expected an integer >= 1, got {getattr(self, name)}")
        for name in ("lr", "lr_mixer", "lr_discriminator"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise HgdefendError(f"{name}: expected a positive learning rate, got {v}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise HgdefendError(f"lr_schedule: expected 'cosine' or 'constant', got {self.lr_schedule!r}")
        gap = self.checkpoint_min_interval_s
        if not (isinstance(gap, int | float) and math.isfinite(gap) and gap >= 0):
            raise HgdefendError(f"checkpoint_min_interval_s: expected a number of seconds >= 0, got {gap!r}")
        budget = self.time_budget_s
        if budget is not None and not (math.isfinite(budget) and budget >= 0):
            raise HgdefendError(f"time_budget_s: expected a number of seconds >= 0, got {budget!r}")
        self.betas = tuple(self.betas)
        self.diversity, self.diversity_weight = check_diversity(self.diversity, self.diversity_weight)
        check_adversarial(self.adversarial, self.adv_eps, self.adv_steps, self.adv_alpha, self.trades_beta)
        warm = self.adv_eps_warmup
        if isinstance(warm, bool) or not isinstance(warm, int) or warm < 0:
            raise HgdefendError(f"adv_eps_warmup: expected a number of steps >= 0, got {warm!r}")
        if self.strategy != "auto":
            plan = parse_strategy(self.strategy)  # fail at construction, naming the field
            if plan.kernel == "fused" and self.diversity == "gradient":
                raise HgdefendError(
                    "strategy: the 'fused' kernel is differentiable once, and diversity 'gradient' "
                    "differentiates input gradients: use 'grouped' (or 'auto')"
                )


@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    mixer_pretrain: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"steps": self.steps, "seconds": round(self.seconds, 2),
                "mixer_pretrain": self.mixer_pretrain,
                "last": self.history[-1] if self.history else {}}  # fmt: skip


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/'auto' picks CUDA when present; an unavailable device is a clear error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise HgdefendError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):  # e.g. 'meta' would run without computing anything
        raise HgdefendError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HgdefendError("device: 'cuda' requested but no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise HgdefendError(f"device: {device!r} does not exist; {n} CUDA device(s) here")
    return dev


def task_loss(logits: Tensor, y: Tensor, task: str) -> Tensor:
    """Mean over members and batch: cross-entropy for classes, MSE for regression."""
    if task == "regression":
        return F.mse_loss(logits.squeeze(-1), y.expand(logits.shape[0], -1))
    k, b, c = logits.shape
    return F.cross_entropy(logits.reshape(k * b, c), y.repeat(k))


def step_loss(
    forward: Callable[[Params, Tensor], Tensor],
    params: Params,
    x: Tensor,
    y: Tensor,
    task: str,
    cfg: TrainConfig,
    g: torch.Generator,
    step: int = 0,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(task loss, member logits, logs) of one step: on the batch, or adversarial (``cfg.adversarial``,
    at ``adv_eps`` scaled by the warm-up: ``(step + 1) / adv_eps_warmup`` until it reaches 1).
    The logs are detached tensors: :class:`_Loop` reads them every few steps, not every step."""
    if cfg.adversarial == "none":
        logits = forward(params, x)
        loss = task_loss(logits, y, task)
        return loss, logits, {"loss": loss.detach()}
    if task != "classification":
        raise HgdefendError(f"adversarial: {cfg.adversarial!r} needs a classification target")
    eps = cfg.adv_eps * min(1.0, (step + 1) / cfg.adv_eps_warmup) if cfg.adv_eps_warmup else cfg.adv_eps
    loss, logits, logs = adversarial_loss(forward, params, x, y, method=cfg.adversarial, eps=eps,
                                          steps=cfg.adv_steps, alpha=cfg.adv_alpha,
                                          trades_beta=cfg.trades_beta, generator=g)  # fmt: skip
    return loss, logits, {"loss": loss.detach(), **logs}


@torch.no_grad()
def quick_eval(ens: SampledEnsemble, split: Split, task: str) -> dict[str, float]:
    x, y = split.x.to(ens.device), split.y.to(ens.device)
    logits = ens.forward_logits(x)
    if task == "regression":
        pred = logits.squeeze(-1)
        return {"ensemble_mse": float(F.mse_loss(pred.mean(0), y)),
                "member_mse": float(((pred - y) ** 2).mean())}  # fmt: skip
    member_acc = (logits.argmax(-1) == y).float().mean(1)
    ens_acc = (predict(logits) == y).float().mean()
    return {"member_acc_mean": float(member_acc.mean()), "member_acc_min": float(member_acc.min()),
            "ensemble_acc": float(ens_acc)}  # fmt: skip


LOG_EVERY = 10
"""Steps between reads of the losses for the progress bar (each read waits for the GPU)."""


def _floats(logs: dict[str, Tensor]) -> dict[str, float]:
    """The logged losses as numbers, read in one transfer (one host synchronisation)."""
    if not logs:
        return {}
    device = next((v.device for v in logs.values() if isinstance(v, Tensor)), torch.device("cpu"))
    values = torch.stack(
        [torch.as_tensor(v).detach().to(device, torch.float32).reshape(()) for v in logs.values()]
    )
    return dict(zip(logs, values.tolist(), strict=True))


def _fused(device: torch.device) -> bool | None:
    """Fused Adam on CUDA (one kernel per update instead of several per parameter group); torch's
    default elsewhere. Checkpoints do not record it (:data:`hgdefend.io.IMPLEMENTATION_KEYS`)."""
    return True if device.type == "cuda" else None


def _clock() -> float:
    """The training clock (tests replace it to make time-budget runs deterministic)."""
    return time.perf_counter()


def _cosine(progress: float) -> float:
    """Cosine-annealing factor: 1 at progress 0, 0 at progress >= 1."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor


class _Loop:
    """Shared skeleton: schedule, progress bar, periodic eval, checkpoints, time budget.

    ``optimizers``: the optimizers whose learning rate follows the time budget (see the module
    docstring); ``elapsed_before``: training seconds already spent (from a checkpoint).
    """

    def __init__(self, cfg: TrainConfig, progress: bool, desc: str,
                 optimizers: list[torch.optim.Optimizer] | None = None,
                 elapsed_before: float = 0.0) -> None:  # fmt: skip
        self.cfg, self.progress, self.desc = cfg, progress, desc
        self.optimizers = list(optimizers or [])
        self.elapsed_before = float(elapsed_before)
        # under torchrun: rank 0's answer to "is a checkpoint due?" (a rank's clock may say otherwise)
        self.agree: Callable[[bool], bool] | None = None

    def run(
        self,
        start: int,
        step_fn: Callable[[int, torch.Generator], dict[str, Tensor]],
        eval_fn: Callable[[], dict[str, float]] | None,
        checkpoint_fn: Callable[[int, list, float], None] | None,
        history: list[dict[str, float]],
    ) -> tuple[int, float]:
        """Run steps ``start..steps`` (or until the budget); return (last step, seconds of this call)."""
        cfg = self.cfg
        budget = cfg.time_budget_s
        anneal_by_time = budget is not None and cfg.lr_schedule == "cosine"
        t0 = _clock()

        def elapsed() -> float:
            return self.elapsed_before + _clock() - t0

        step = start
        last_checkpoint = self.elapsed_before
        # disable=None: silent when stderr is not a terminal (logs, CI), as with progress=False
        bar = tqdm(total=cfg.steps, initial=start, desc=self.desc, disable=None if self.progress else True,
                   leave=False, dynamic_ncols=True)  # fmt: skip
        try:
            while step < cfg.steps:
                if anneal_by_time:
                    time_progress = elapsed() / budget if budget > 0 else 1.0
                    _set_lr(self.optimizers, _cosine(max(step / cfg.steps, time_progress)))
                g = make_generator(cfg.seed * 1_000_003 + step)
                logs = step_fn(step, g)
                step += 1
                now = elapsed()
                if budget is not None:  # the bar's total (and so its ETA) follows the budget
                    bar.total = _expected_steps(
                        step, start, now - self.elapsed_before, budget - now, cfg.steps
                    )
                bar.update(1)
                if step % LOG_EVERY == 0 and not bar.disable:  # reading the losses waits for the GPU
                    bar.set_postfix({k: f"{v:.3g}" for k, v in _floats(logs).items()})
                out_of_time = budget is not None and now >= budget
                last = step >= cfg.steps or out_of_time
                if eval_fn and (last or (cfg.eval_every and step % cfg.eval_every == 0)):
                    history.append({"step": step, "seconds": now, **_floats(logs), **eval_fn()})
                due = bool(cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                write = last or (due and now - last_checkpoint >= cfg.checkpoint_min_interval_s)
                if checkpoint_fn and due and not last and cfg.checkpoint_min_interval_s and self.agree:
                    write = self.agree(write)  # the checkpoint is a collective: all ranks or none
                if checkpoint_fn and write:
                    checkpoint_fn(step, history, now)
                    last_checkpoint = now
                if out_of_time:
                    break
        finally:
            bar.close()
        return step, _clock() - t0


def _expected_steps(step: int, start: int, seconds: float, left: float, steps: int) -> int:
    """Where a budget-limited run will stop, at the rate of this call so far."""
    if left <= 0:
        return step
    if seconds <= 0:
        return steps
    return min(steps, step + math.ceil(left * (step - start) / seconds))


def _schedule(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The step-count schedule (with a time budget, :class:`_Loop` sets the cosine's learning rate)."""
    if cfg.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=0.0)


class Trainer:
    """Trains a HyperGAN: ``min E_s E_(x,y) L(F(x; G(Q(s))), y) + β·R(Q(s), prior)``."""

    def __init__(
        self,
        hypergan: HyperGAN,
        train: Split,
        config: TrainConfig | None = None,
        *,
        val: Split | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        checkpoint: str | Path | None = None,
        dist: Distributed | None = None,
    ) -> None:
        self.cfg = config or TrainConfig()
        self.device = resolve_device(device)
        n, b = self.cfg.nets_per_step, min(self.cfg.batch_size, max(1, len(train)))
        hypergan.check_memory(n, f"nets_per_step: {n} networks × batch_size {b} with gradients",
                              batch=b, training=True)  # fmt: skip
        self.hg = hypergan.to(self.device)
        if hasattr(self.hg.target, "to"):
            self.hg.target.to(self.device)
        self.task = hypergan.target.task
        if self.cfg.diversity != "none" and self.task != "classification":
            raise HgdefendError(f"diversity: {self.cfg.diversity!r} needs a classification target")
        if len(train) == 0:
            raise HgdefendError("train: the training split is empty")
        self.x, self.y = train.x.to(self.device), train.y.to(self.device)
        self.val = val
        self.progress = progress
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.dist = dist  # torchrun: this rank's members or batch shard, gradients averaged (distributed.py)
        if dist is not None:
            dist.check_config(self.cfg, len(train))
            dist.broadcast_module(self.hg)
        cfg = self.cfg
        groups = [{"params": self.hg.generator_parameters(), "lr": cfg.lr}]
        if self.hg.mixer is not None:
            groups.append({"params": list(self.hg.mixer.parameters()), "lr": cfg.lr_mixer})
        fused = _fused(self.device)
        self.opt_g = torch.optim.Adam(groups, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused)
        self.optimizers = {"generator": self.opt_g}
        self.schedulers = {"generator": _schedule(self.opt_g, cfg)}
        if self.hg.discriminator is not None:
            self.opt_d = torch.optim.Adam(
                self.hg.discriminator.parameters(), lr=cfg.lr_discriminator, betas=cfg.betas,
                weight_decay=cfg.weight_decay, fused=fused,
            )  # fmt: skip
            self.optimizers["discriminator"] = self.opt_d
            self.schedulers["discriminator"] = _schedule(self.opt_d, cfg)
        if cfg.cuda_graph:
            check_graphable(self)

    def _step(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        cfg, hg = self.cfg, self.hg
        hg.train()
        codes = hg.codes(hg.sample_noise(cfg.nets_per_step, g))
        params = hg.weights(codes if self.dist is None else self.dist.members(codes))
        idx = rng.randint(len(self.x), min(cfg.batch_size, len(self.x)), g, self.device)
        if self.dist is not None:
            idx = self.dist.batch(idx)
        xb, yb = self.x[idx], self.y[idx]
        loss, logits, logs = step_loss(lambda p, x: hg.target.forward(p, x, strategy=cfg.strategy),
                                       params, xb, yb, self.task, cfg, g, step)  # fmt: skip
        reg = hg.regulariser_loss(codes, g)
        total = loss + hg.beta * reg
        logs["reg"] = reg.detach()
        if cfg.diversity != "none":
            div = diversity_loss(cfg.diversity, hg.target, params, xb, yb, logits, g, strategy=cfg.strategy)
            total = total + cfg.diversity_weight * div
            logs["diversity"] = div.detach()
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        if self.dist is not None:
            self.dist.average_gradients(self.opt_g)
        self.opt_g.step()
        if hg.discriminator is not None:
            d_loss = hg.discriminator_loss(codes, g)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            if self.dist is not None:
                self.dist.average_gradients(self.opt_d)
            self.opt_d.step()
            logs["d_loss"] = d_loss.detach()
        for s in self.schedulers.values():
            s.step()
        return logs

    def _eval(self) -> dict[str, float]:
        if self.val is None:
            return {}
        ens = self.hg.ensemble(self.cfg.eval_members, seed=10_000 + self.cfg.seed)
        return quick_eval(ens, self.val, self.task)

    def fit(self, *, resume: bool = False) -> TrainResult:
        """Train for ``config.steps`` (or until the time budget); resume from the checkpoint."""
        start, history, pre, seconds = 0, [], {}, 0.0
        if resume:
            if self.checkpoint is None or not self.checkpoint.is_file():
                raise HgdefendError(f"resume: no checkpoint at {self.checkpoint}")
            state = load_checkpoint(self.checkpoint, self.hg, self.optimizers, self.schedulers)
            if _math_config(state.get("config", {})) != _math_config(_jsonable(asdict(self.cfg))):
                raise HgdefendError(
                    "resume: the checkpoint was written with another training config "
                    "(steps, learning rates, batch sizes and seed must match)"
                )
            start, history, pre = state["step"], state["history"], state["mixer_pretrain"]
            seconds = float(state.get("seconds", 0.0))
            budget_before = state.get("config", {}).get("time_budget_s")
            if (
                budget_before is not None
                and self.cfg.time_budget_s is None
                and self.cfg.lr_schedule == "cosine"
            ):
                # the checkpoint's learning rate followed its time budget; go back to the step cosine
                _set_lr(list(self.optimizers.values()), _cosine(start / self.cfg.steps))
        else:
            steps, loss = self.hg.pretrain_mixer(
                max_steps=self.cfg.pretrain_max_steps, generator=make_generator(self.cfg.seed)
            )
            pre = {"steps": steps, "final_loss": loss}

        def ckpt(step: int, hist: list, secs: float) -> None:
            save_checkpoint(
                self.checkpoint, self.hg, self.optimizers,
                {"step": step, "history": hist, "mixer_pretrain": pre, "seconds": secs,
                 "config": _jsonable(asdict(self.cfg))},
                self.schedulers,
            )  # fmt: skip

        loop = _Loop(self.cfg, self.progress, "train hypergan", list(self.optimizers.values()), seconds)
        if self.checkpoint and self.dist is not None:
            ckpt = self.dist.once("writing the checkpoint", ckpt)  # rank 0 writes, after a barrier
            dist = self.dist
            loop.agree = lambda flag: dist.agree(flag, "the checkpoint decision")
        step_fn = GraphedStep(self, task_loss) if self.cfg.cuda_graph else self._step
        step, secs = loop.run(start, step_fn, self._eval, ckpt if self.checkpoint else None,
                              history)  # fmt: skip
        self.hg.eval()
        return TrainResult(step, secs, history, pre)


# ``strategy`` and ``cuda_graph`` change only float round-off, not the method, so a resume may switch
# them. A resume may change ``time_budget_s`` too: the rest of the schedule follows the new budget
# (or the step count).
_BOOKKEEPING = (
    "eval_every",
    "eval_members",
    "checkpoint_every",
    "checkpoint_min_interval_s",
    "time_budget_s",
    "strategy",
    "cuda_graph",
)


def _math_config(d: dict) -> dict:
    """The config fields that change the trained weights (not when we log or save)."""
    return {k: v for k, v in d.items() if k not in _BOOKKEEPING}


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# --------------------------------------------------------------------------- baselines
def train_members(
    target: Target,
    train: Split,
    k: int,
    config: TrainConfig | None = None,
    *,
    dropout: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    init_seed: int | None = None,
) -> tuple[Params, TrainResult]:
    """Train K independently initialised networks at once through the batched forward.

    This is how the deep-ensemble baseline (K > 1), the single network (K = 1) and MC dropout
    (``dropout=True`` on a spec with dropout layers) are trained: same data, same code path.
    """
    cfg = config or TrainConfig()
    dev = resolve_device(device)
    seed = cfg.seed if init_seed is None else init_seed
    params = {n: t.to(dev).requires_grad_(True)
              for n, t in target.init_params(k, make_generator(seed)).items()}  # fmt: skip
    opt = torch.optim.Adam(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=_fused(dev))
    sched = _schedule(opt, cfg)
    x, y = train.x.to(dev), train.y.to(dev)

    def step_fn(step: int, g: torch.Generator) -> dict[str, Tensor]:
        idx = rng.randint(len(x), min(cfg.batch_size, len(x)), g, dev)
        loss, _, logs = step_loss(
            lambda p, xb: target.forward(p, xb, dropout=dropout, strategy=cfg.strategy),
            params, x[idx], y[idx], target.task, cfg, g, step,
        )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        (loss * k).backward()  # each member's gradient as if alone
        opt.step()
        sched.step()
        return logs

    history: list[dict[str, float]] = []
    step, secs = _Loop(cfg, progress, f"train {k} member(s)", [opt]).run(
        0, step_fn, lambda: {}, None, history
    )
    return {n: t.detach() for n, t in params.items()}, TrainResult(step, secs, history)


def train_ensemble(
    target: Target, train: Split, k: int, config: TrainConfig | None = None, *,
    kind: str = "deep-ensemble", **kw: Any,
) -> tuple[SampledEnsemble, TrainResult]:  # fmt: skip
    """K members trained by :func:`train_members`, as an ensemble, with the training record (its
    step count: budget-limited comparisons report how many steps each method got)."""
    params, result = train_members(target, train, k, config, **kw)
    return SampledEnsemble(target, params, kind=kind, seed=(config or TrainConfig()).seed), result


def deep_ensemble(target: Target, train: Split, k: int, config: TrainConfig | None = None,
                  **kw: Any) -> SampledEnsemble:  # fmt: skip
    return train_ensemble(target, train, k, config, **kw)[0]


def single_network(target: Target, train: Split, config: TrainConfig | None = None,
                   **kw: Any) -> SampledEnsemble:  # fmt: skip
    return train_ensemble(target, train, 1, config, kind="single", **kw)[0]


def mc_dropout(spec: Any, train: Split, k: int, config: TrainConfig | None = None,
               p: float = 0.25, **kw: Any) -> SampledEnsemble:  # fmt: skip
    """One network trained with dropout; K dropout masks at test time become K members."""
    target = mc_dropout_variant(spec, p)
    params, _ = train_members(target, train, 1, config, dropout=True, **kw)
    expanded = {n: t.expand(k, *t.shape[1:]) for n, t in params.items()}
    return SampledEnsemble(target, expanded, kind="mc-dropout", mc_dropout=True,
                           seed=(config or TrainConfig()).seed)  # fmt: skip
