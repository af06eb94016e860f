"""The plain training step captured once as a CUDA graph and replayed (``TrainConfig(cuda_graph=True)``).

A step of the paper's MNIST HyperGAN is some 300 small kernels (mixer, one generator per layer, the
members' batched forward and backward, the discriminator): eager PyTorch takes longer to launch them
than the GPU takes to run them. Captured once, the whole forward and backward pass is one launch.

Outside the graph, as in the eager step: the random draws (made on the CPU from the step's seeded
generator, in the eager step's order, then copied into the graph's fixed input buffers), and the two
fused Adam updates and the schedule (a few kernels; their learning rates change every step). The
discriminator's update does not depend on the generator's (its input codes are detached), so both
backward passes run in the graph and both updates after it: the eager step's arithmetic.

Only the plain recipe is captured (no adversarial training, no diversity objective, no torchrun):
those draw random numbers inside the step, which a graph would replay unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import rng
from .validation import HgdefendError

Trainer = Any  # hgdefend.training.Trainer (which imports this module)

WARMUP = 3
"""Passes on a side stream before capture (lazy initialisation, cuDNN's algorithm choice)."""


def check_graphable(trainer: Trainer) -> None:
    """Refuse (naming ``cuda_graph``) a configuration the graph cannot replay faithfully."""
    cfg = trainer.cfg
    why = None
    if trainer.device.type != "cuda":
        why = "a CUDA device"
    elif cfg.adversarial != "none" or cfg.diversity != "none":
        why = "the plain recipe (no --adversarial, no --diversity: they draw inside the step)"
    elif trainer.dist is not None:
        why = "one process (not torchrun)"
    if why:
        raise HgdefendError(f"cuda_graph: a captured training step needs {why}")


class GraphedStep:
    """Drop-in for ``Trainer._step``: same draws, same losses, same updates; one graph launch."""

    def __init__(self, trainer: Trainer, task_loss: Callable[[Tensor, Tensor, str], Tensor]) -> None:
        check_graphable(trainer)
        self.t, self.task_loss = trainer, task_loss
        hg, dev = trainer.hg, trainer.device
        self.k = trainer.cfg.nets_per_step
        self.b = min(trainer.cfg.batch_size, len(trainer.x))
        codes = self.k * len(hg.groups)
        self.noise = torch.zeros(self.k, hg.noise_dim, device=dev)
        self.idx = torch.zeros(self.b, dtype=torch.long, device=dev)
        self.prior_reg = torch.zeros(codes, hg.code_dim, device=dev) if hg.regulariser == "mmd" else None
        self.prior_d = torch.zeros(codes, hg.code_dim, device=dev) if hg.discriminator is not None else None
        self.names = ["loss", "reg"] + (["d_loss"] if hg.discriminator is not None else [])
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logs: Tensor | None = None

    def _draw(self, g: torch.Generator) -> None:
        """The eager step's draws, by the same calls in its order, into the graph's input buffers."""
        t, hg = self.t, self.t.hg
        self.noise.copy_(hg.sample_noise(self.k, g))
        self.idx.copy_(rng.randint(len(t.x), self.b, g, t.device))
        for buf in (self.prior_reg, self.prior_d):  # regulariser, then discriminator, as eagerly
            if buf is not None:
                buf.copy_(rng.randn(buf.shape, g, t.device))

    def _zero_grad(self) -> None:
        for opt in self.t.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def _body(self) -> Tensor:
        """Forward and both backward passes on the input buffers; the losses, stacked."""
        t, hg = self.t, self.t.hg
        hg.train()
        codes = hg.codes(self.noise)
        params = hg.weights(codes)
        xb, yb = t.x[self.idx], t.y[self.idx]
        loss = self.task_loss(hg.target.forward(params, xb, strategy=t.cfg.strategy), yb, t.task)
        reg = hg.regulariser_loss(codes, prior=self.prior_reg)
        (loss + hg.beta * reg).backward()
        logs = [loss, reg]
        if hg.discriminator is not None:
            for p in hg.discriminator.parameters():  # as the eager step's opt_d.zero_grad()
                p.grad = None
            d_loss = hg.discriminator_loss(codes, prior=self.prior_d)
            d_loss.backward()
            logs.append(d_loss)
        return torch.stack([v.detach().reshape(()) for v in logs])

    def _capture(self) -> None:
        side = torch.cuda.Stream(self.t.device)
        side.wait_stream(torch.cuda.current_stream(self.t.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP):  # gradients only: no update, so training is unchanged
                self._zero_grad()
                self._body()
        torch.cuda.current_stream(self.t.device).wait_stream(side)
        self._zero_grad()  # the graph's backward writes fresh gradient buffers, replayed in place
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logs = self._body()

    def __call__(self, step: int, g: torch.Generator) -> dict[str, Tensor]:
        self._draw(g)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        for opt in self.t.optimizers.values():
            opt.step()
        for s in self.t.schedulers.values():
            s.step()
        logs = self.logs.clone()  # the next replay overwrites the graph's output
        return {name: logs[i] for i, name in enumerate(self.names)}
