"""The "user's script" of benchmarks/protect_fmnist.py: a small CNN trained on Fashion-MNIST with
plain torch, its weights saved as safetensors. Nothing here knows about hgdefend.

``hgdefend train --backbone benchmarks/fmnist_cnn.py:cnn_10 --backbone-weights cnn.safetensors
--generate 8,10`` (``cnn_5`` for a model of 5 classes) protects it; the two linear layers ``8`` and
``10`` are the head.

    python benchmarks/fmnist_cnn.py --data-root ../shared/data --out cnn.safetensors [--classes 0-4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HEAD = ["8", "10"]
"""The submodules a head HyperGAN generates: both linear layers (19k parameters for 10 classes)."""


def cnn(classes: int) -> nn.Sequential:
    """Two convolutions, a 3×3 pooled feature map, a 64-unit hidden layer and the classifier."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 0-2: 16×14×14
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 3-5: 32×7×7
        nn.MaxPool2d(2), nn.Flatten(),                                # 6-7: 288
        nn.Linear(32 * 3 * 3, 64), nn.ReLU(), nn.Linear(64, classes), # 8-10
    )  # fmt: skip


def cnn_10() -> nn.Sequential:
    """All ten Fashion-MNIST classes (the ``--backbone FILE.py:FUNCTION`` entry point)."""
    return cnn(10)


def cnn_5() -> nn.Sequential:
    """Five classes (a model trained on a subset of the classes)."""
    return cnn(5)


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 2,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """Plain minibatch Adam with cross-entropy; returns what a user would log."""
    g = torch.Generator().manual_seed(seed)
    model.to(device).train()
    x, y = x.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0, steps, loss = time.perf_counter(), 0, torch.zeros(())
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g).to(device)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    model.eval()
    return {
        "epochs": epochs,
        "steps": steps,
        "final_loss": float(loss.detach()),
        "seconds": time.perf_counter() - t0,
    }


def save(model: nn.Module, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))


def main() -> None:
    from hgdefend import load_data  # only to read the files; any loader would do

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--classes", default=None, help="train on these classes only, e.g. 0-4")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    data = load_data("fashion-mnist", root=args.data_root, in_classes=args.classes)
    model = cnn(data.num_classes)
    print(train(model, data.train.x, data.train.y, epochs=args.epochs))
    save(model, args.out)


if __name__ == "__main__":
    main()
