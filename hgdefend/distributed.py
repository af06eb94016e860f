"""Training one HyperGAN across processes, GPUs and machines with ``torch.distributed`` (torchrun).

``torchrun --nproc-per-node N -m hgdefend.cli train ...`` starts N copies of ``hgdefend train``;
each finds the launch in its environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``: :func:`launched`)
and joins one process group (:func:`init_distributed`): gloo on the CPU, NCCL on CUDA with rank r
on ``cuda:LOCAL_RANK``, both with a finite timeout.

How a step is split (``split``)
-------------------------------
Every rank draws the step's randomness from the same generator, seeded by ``(seed, step)`` exactly
as one process does: the noise of all ``nets_per_step`` members, the minibatch indices, the
regulariser's prior samples. Then

* ``split="members"`` (the default): rank r generates and evaluates only its own slice of the
  members (``nets_per_step / N`` networks: the per-layer generators and the target's forward and
  backward, the expensive part) on the whole minibatch;
* ``split="batch"``: every rank generates all members and evaluates them on its own shard of the
  minibatch (``batch_size / N`` inputs): pays where the target's forward dominates (big inputs).

The mixer's codes, the latent regulariser and the discriminator are computed on all the members'
codes on every rank (small MLPs; every rank gets the same values). The task loss is a mean over
members × inputs, so with equal shares the mean of the ranks' gradients is the one-process
gradient: the union of the ranks' members (or shards) is exactly the one process's, drawn from the
same stream. So the same seed gives the same model as one process, up to float round-off (the
mean is summed in N parts; ``tests/test_distributed.py`` states and checks the tolerance). That is
why the members' noise is not drawn from a per-rank stream: a stream per ``(seed, step, rank)``
would give a valid run but a different model for every N, and nothing to compare with. (Adam
magnifies that round-off where gradients are near zero: over many steps the weights drift apart as
much as a relative 1e-7 perturbation of one process's gradients makes them; see
``benchmarks/distributed_speed.py``.) With ``adversarial`` training the attacks' random starts are
drawn from the same stream in the rank's shape, so that run is as valid but not the one-process run.

Why an all-reduce of the gradients and not ``DistributedDataParallel``
----------------------------------------------------------------------
The trainer calls the HyperGAN's methods (``codes``, ``weights``, ``regulariser_loss``,
``discriminator_loss``), never its ``forward``, and steps two optimizers on different losses; DDP
hooks its reduction into ``forward`` of the wrapped module and expects one backward per forward.
Averaging the gradients after each ``backward`` (:meth:`Distributed.average_gradients`, one flat
all-reduce per optimizer) keeps the one-process code path unchanged: with ``dist=None`` nothing
here runs. Every rank starts from rank 0's weights (:meth:`Distributed.broadcast_module`) and
applies the same averaged gradients with the same optimizer, so the replicas stay identical.

Files are written once, by rank 0, after a barrier (:meth:`Distributed.run_once`); resuming reads
the checkpoint on every rank (a shared folder on several machines). :func:`sharded_map` splits a
large input set across the ranks (scores, attacks) and gathers the results back in input order.

Failures: a rank that dies closes its connections, and the others' next collective fails at once;
one that hangs makes them time out after ``timeout_s``. Either way every surviving rank raises one
:class:`DistributedError` that names the ranks that stopped answering (or the timeout) instead of
hanging; ``hgdefend train`` prints it as one line and exits non-zero, and torchrun stops the rest.

Not yet supported across processes: ``diversity`` objectives (they compare all members with each
other) and ``time_budget_s`` (the ranks' clocks would disagree on when to stop); both are refused.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

from .errors import HgdefendError

SPLITS = ("members", "batch")
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "HGDEFEND_DIST_TIMEOUT"
"""Seconds a collective may wait for the other ranks (default :data:`DEFAULT_TIMEOUT_S`)."""


class DistributedError(HgdefendError):
    """A rank was lost (it stopped, crashed or hung) or a collective timed out."""


def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets ``RANK`` and ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise DistributedError(f"distributed: {name} is not set (start the run with torchrun)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"distributed: {name} must be an integer, got {raw!r}") from None


def check_timeout(timeout_s: object, name: str = "timeout_s") -> float:
    try:
        value = float(timeout_s)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise HgdefendError(f"{name}: expected a number of seconds > 0, got {timeout_s!r}") from None
    if not (value > 0 and value < float("inf")):
        raise HgdefendError(f"{name}: expected a finite number of seconds > 0, got {timeout_s!r}")
    return value


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank's contiguous share of ``n`` items; the shares differ by at most one."""
    base, extra = divmod(int(n), int(world_size))
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def shard_sizes(n: int, world_size: int) -> list[int]:
    return [hi - lo for lo, hi in (shard_bounds(n, world_size, r) for r in range(world_size))]


@dataclass
class Distributed:
    """This process's place in the run and the collectives the trainer needs (see the module doc)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    timeout_s: float
    split: str = "members"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend, "split": self.split}

    # ------------------------------------------------------------------ the trainer's hooks
    def check_config(self, cfg: Any, n_train: int) -> None:
        """Refuse what cannot be split exactly (each rank needs an equal share) or is not supported."""
        w = self.world_size
        if self.split == "members" and cfg.nets_per_step % w:
            raise HgdefendError(
                f"nets_per_step: {cfg.nets_per_step} networks do not split evenly over {w} ranks "
                f"(split 'members'); use a multiple of {w}"
            )
        batch = min(cfg.batch_size, n_train)
        if self.split == "batch" and batch % w:
            raise HgdefendError(
                f"batch_size: a minibatch of {batch} does not split evenly over {w} ranks "
                f"(split 'batch'); use a multiple of {w}"
            )
        if cfg.diversity != "none":
            raise HgdefendError(
                f"diversity: {cfg.diversity!r} compares all members with each other; it is not "
                "supported across processes yet (train it in one process)"
            )
        if cfg.time_budget_s is not None:
            raise HgdefendError(
                "time_budget_s: a time budget is not supported across processes yet (the ranks "
                "would stop at different steps); give a number of steps"
            )

    def members(self, t: Tensor) -> Tensor:
        """This rank's slice of the step's members (dim 0), with ``split="members"``."""
        if self.split != "members":
            return t
        lo, hi = shard_bounds(t.shape[0], self.world_size, self.rank)
        return t[lo:hi]

    def batch(self, t: Tensor) -> Tensor:
        """This rank's shard of the step's minibatch (dim 0), with ``split="batch"``."""
        if self.split != "batch":
            return t
        lo, hi = shard_bounds(t.shape[0], self.world_size, self.rank)
        return t[lo:hi]

    def average_gradients(self, params: Iterable[nn.Parameter] | torch.optim.Optimizer) -> None:
        """Replace every gradient by its mean over the ranks: one flat all-reduce (a parameter
        without a gradient counts as zeros, and gets the mean too)."""
        if isinstance(params, torch.optim.Optimizer):
            params = [p for group in params.param_groups for p in group["params"]]
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._collective("the gradient all-reduce", lambda: _dist().all_reduce(flat))
        flat.div_(self.world_size)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (the replicas start identical)."""
        tensors = [t for t in list(module.parameters()) + list(module.buffers()) if t.numel()]
        if not tensors:
            return
        with torch.no_grad():
            flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
            self._collective("the weight broadcast", lambda: _dist().broadcast(flat, src=0))
            offset = 0
            for t in tensors:
                n = t.numel()
                t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
                offset += n

    def agree(self, flag: bool, what: str = "a decision") -> bool:
        """Rank 0's ``flag`` on every rank: for decisions each rank could make differently (one read
        from its own clock) that must not send the ranks down different collectives."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        self._collective(what, lambda: _dist().broadcast(t, src=0))
        return bool(t.item())

    def barrier(self, what: str = "a barrier") -> None:
        # an all-reduce rather than dist.barrier(): it runs on this rank's device with every backend
        token = torch.zeros(1, device=self.device)
        self._collective(what, lambda: _dist().all_reduce(token))

    def run_once(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """All ranks meet, then rank 0 alone runs ``fn`` (writes a file); the others get None."""
        self.barrier(f"the barrier before {what}")
        return fn(*args, **kwargs) if self.is_main else None

    def once(self, what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` wrapped by :meth:`run_once` (the trainer's checkpoint writer)."""
        return lambda *args, **kwargs: self.run_once(what, fn, *args, **kwargs)

    def sharded_map(self, fn: Callable[..., Any], *inputs: Tensor) -> Any:
        return sharded_map(fn, *inputs, dist=self)

    def close(self) -> None:
        """Leave the process group (tolerant: after a lost rank it may already be broken)."""
        d = _dist()
        if d.is_initialized():
            try:
                d.destroy_process_group()
            except Exception:  # noqa: BLE001 - closing after a failure must not hide the failure
                pass

    def exit_together(self, what: str = "the end of the run") -> NoReturn:
        """End this rank's process once every rank has reached this point, without tearing gloo down.

        Measured: in about 1 of 30 two-process CPU runs, one rank aborted at exit ("terminate called
        without an active exception", SIGABRT) after every file was written, and torchrun then
        failed the run (2026-11-28, torch 2.14.1, gloo). The abort is in gloo's teardown, so this
        skips it: a barrier (every collective is done), then a handshake through the run's store (no
        rank leaves while another is still in the barrier), then ``os._exit(0)``. Only for a process
        that torchrun started and that has nothing left to do.
        """
        self.barrier(what)
        try:
            store = _dist().distributed_c10d._get_default_store()
            key = f"hgdefend/exit/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
            store.add(key, 1)
            deadline = time.monotonic() + self.timeout_s
            while store.add(key, 0) < self.world_size and time.monotonic() < deadline:
                time.sleep(0.01)
        except Exception:  # noqa: BLE001 - the store's host left: it saw every rank check in first
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    # ------------------------------------------------------------------ failures
    def _collective(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (RuntimeError, ValueError) as exc:  # DistBackendError, DistNetworkError, timeouts
            raise self._lost(what, exc) from exc

    def _lost(self, what: str, exc: BaseException) -> DistributedError:
        lost = _silent_ranks(self.rank, self.world_size, min(5.0, self.timeout_s))
        if lost is None:
            who = "the run's store is unreachable too: rank 0 or the launcher that holds it is gone"
        elif lost:
            who = f"rank{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} stopped answering"
        else:
            who = "every rank is still answering"
        detail = _detail(exc)
        return DistributedError(
            f"distributed: {what} failed on rank {self.rank} of {self.world_size} ({who}; a rank "
            f"that crashed fails this at once, one that hangs after the {self.timeout_s:g} s "
            f"timeout): {detail}"
        )


def _detail(exc: BaseException) -> str:
    """The backend's message on one line, without its source location and boilerplate."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(exc).split()))
    text = text.split(" This is typically caused by")[0]
    return text if len(text) <= 240 else text[:239] + "…"


def _dist() -> Any:
    import torch.distributed as d

    return d


def _silent_ranks(rank: int, world_size: int, wait_s: float) -> list[int] | None:
    """After a failed collective: the ranks that do not check in with the run's store within
    ``wait_s`` (every survivor checks in), or None when the store itself is unreachable."""
    d = _dist()
    try:
        store = d.distributed_c10d._get_default_store()
        prefix = f"hgdefend/failed/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        store.set(f"{prefix}{rank}", "1")
        waiting = {r for r in range(world_size) if r != rank}
        deadline = time.monotonic() + wait_s
        while waiting and time.monotonic() < deadline:
            waiting = {r for r in waiting if not store.check([f"{prefix}{r}"])}
            if waiting:
                time.sleep(0.1)
        return sorted(waiting)
    except Exception:  # noqa: BLE001 - the store's host may be the lost process
        return None


def init_distributed(
    *,
    device: str | torch.device | None = None,
    timeout_s: float | None = None,
    split: str = "members",
) -> Distributed | None:
    """Join the process group that torchrun describes in the environment; None when not launched so.

    ``device``: 'auto' or None takes ``cuda:LOCAL_RANK`` (NCCL) when CUDA is present, else the CPU
    (gloo); 'cpu' forces gloo on the CPU; 'cuda' means ``cuda:LOCAL_RANK``. ``timeout_s``: how long
    the rendezvous and every collective may wait (default ``$HGDEFEND_DIST_TIMEOUT`` or 300 s).
    A single-process launch (``WORLD_SIZE=1``) returns None: the one-process code path.
    """
    if split not in SPLITS:
        raise HgdefendError(f"split: expected one of {SPLITS}, got {split!r}")
    if timeout_s is None:
        timeout_s = os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)
    timeout_s = check_timeout(timeout_s)
    if not launched():
        return None
    world = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"distributed: RANK {rank} is not in [0, WORLD_SIZE={world})")
    if world == 1:
        return None
    dev = _rank_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    d = _dist()
    if not d.is_available():
        raise DistributedError("distributed: this torch build has no torch.distributed")
    if d.is_initialized():
        if d.get_world_size() != world or d.get_rank() != rank:
            raise DistributedError("distributed: a process group with another rank or size exists")
    else:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        try:
            d.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as exc:
            detail = _detail(exc)
            raise DistributedError(
                f"distributed: rank {rank} of {world} could not join the process group within "
                f"{timeout_s:g} s ({backend}): {detail}"
            ) from exc
    return Distributed(rank, world, local_rank, dev, backend, timeout_s, split)


def _rank_device(device: str | torch.device | None, local_rank: int) -> torch.device:
    """This rank's device (training.resolve_device's checks, with cuda meaning cuda:LOCAL_RANK;
    not imported from there: training imports this module)."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = torch.device("meta")  # refused below with the message every device check gives
    if dev.type not in ("cpu", "cuda"):
        raise HgdefendError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.type == "cpu":
        return dev
    if dev.index not in (None, local_rank):
        raise HgdefendError(
            f"device: under torchrun each rank uses cuda:LOCAL_RANK (here cuda:{local_rank}); "
            f"give 'cuda' or 'auto', not {device!r}"
        )
    if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise HgdefendError(f"device: rank needs cuda:{local_rank}, and {n} CUDA device(s) are here")
    return torch.device("cuda", local_rank)


def sharded_map(fn: Callable[..., Any], *inputs: Tensor, dist: Distributed | None = None) -> Any:
    """``fn(*inputs)`` computed in shards across the ranks, gathered back in input order.

    Every rank passes the same full ``inputs`` (tensors with the same length on dim 0); rank r runs
    ``fn`` on its contiguous share (sizes differ by at most one) and every rank gets the whole
    result: a tensor, or a tuple/list/dict of tensors, each with one row per input. Without
    ``dist`` (or with one rank) it is just ``fn(*inputs)``. ``fn`` must treat rows independently
    (scores, predictions, an attack without random start or with a per-row seed) for the result to
    equal the one-process one.
    """
    if not inputs:
        raise HgdefendError("inputs: give at least one tensor to shard")
    n = len(inputs[0])
    for i, t in enumerate(inputs):
        if len(t) != n:
            raise HgdefendError(f"inputs: input {i} has {len(t)} rows, input 0 has {n}")
    if dist is None or dist.world_size == 1 or n == 0:
        return fn(*inputs)
    lo, hi = shard_bounds(n, dist.world_size, dist.rank)
    if hi > lo:
        out = fn(*(t[lo:hi] for t in inputs))
    else:  # fewer inputs than ranks: run on one row for the shapes and contribute none
        out = _rows(fn(*(t[:1] for t in inputs)), 0)
    sizes = shard_sizes(n, dist.world_size)
    return _map_tensors(out, lambda t: _gather_rows(t, sizes, hi - lo, dist))


def _rows(out: Any, k: int) -> Any:
    return _map_tensors(out, lambda t: t[:k])


def _map_tensors(out: Any, f: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(out, Tensor):
        return f(out)
    if isinstance(out, dict):
        return {k: _map_tensors(v, f) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_map_tensors(v, f) for v in out)
    raise HgdefendError(f"fn: expected it to return tensors (or a tuple/list/dict of them), got {type(out)}")


def _gather_rows(t: Tensor, sizes: list[int], mine: int, dist: Distributed) -> Tensor:
    if t.dim() == 0 or t.shape[0] != mine:
        raise HgdefendError(
            f"fn: expected one row per input of this rank's shard ({mine}), got shape {list(t.shape)}"
        )
    dtype = t.dtype
    send = t.detach().to(dist.device)
    if dtype == torch.bool:  # gloo and NCCL gather numbers
        send = send.to(torch.uint8)
    most = max(sizes)
    if mine < most:
        send = torch.cat([send, send.new_zeros((most - mine, *send.shape[1:]))])
    send = send.contiguous()
    parts = [torch.empty_like(send) for _ in sizes]
    dist._collective("gathering the sharded results", lambda: _dist().all_gather(parts, send))
    out = torch.cat([p[:k] for p, k in zip(parts, sizes, strict=True)])
    return out.to(dtype).to(t.device)
