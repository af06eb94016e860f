"""Protect your own model: a HyperGAN over the head of a pretrained classifier (CPU, ~15 s).

1. "your model": a small CNN, trained here for a second on digits 0-4 (digits 5-9 are held out:
   inputs the model never saw a class for);
2. keep it frozen and let a HyperGAN generate only its two linear layers, as offsets around your
   weights (``HeadTarget``): the sampled heads start at your model's accuracy;
3. train the HyperGAN for a few hundred steps and compare, at a threshold calibrated for 5 % false
   alarms on clean data, how well the ensemble's entropy flags held-out digits and noise against
   your model's own max-softmax score;
4. save it and load it back: loading needs your model, and refuses one with other weights.

Run: python examples/protect_your_model.py [--seed 0] [--steps 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hgdefend import HyperGAN, SampledEnsemble, TrainConfig, Trainer, load_data, load_model, save_model
from hgdefend.detectors import ScoreDetector, detection_metrics
from hgdefend.targets import HeadTarget


def your_model(classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, classes),
    )  # fmt: skip


def train_your_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 300) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        idx = torch.randint(len(x), (64,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=300, help="HyperGAN training steps")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    data = load_data("digits", in_classes="0-4")  # test: digits 0-4; ood: held-out digits 5-9
    model = your_model(data.num_classes)
    train_your_model(model, data.train.x, data.train.y)

    # Only the two linear layers ("7" and "9" of the Sequential) are generated; the convolutions stay
    # frozen and run once per input. The off-data diversity term makes the sampled heads disagree
    # away from the data (hgdefend.diversity).
    target = HeadTarget(model, generate=["7", "9"], input_shape=data.input_shape)
    hg = HyperGAN(target, noise_dim=64, code_dim=32, hidden=128)
    cfg = TrainConfig(steps=args.steps, nets_per_step=16, diversity="offdata", diversity_weight=1.0,
                      seed=args.seed)  # fmt: skip
    Trainer(hg, data.train, cfg, device="cpu", progress=False).fit()

    yours = SampledEnsemble(target, target.zero_offsets(), kind="single")  # Δ = 0: exactly your model
    protected = hg.ensemble(20, seed=args.seed)
    noise = torch.rand(len(data.test), *data.input_shape, generator=torch.Generator().manual_seed(1))
    print(f"{'':34s} {'accuracy':>8s} {'AUROC 5-9':>9s} {'TPR 5-9':>7s} {'AUROC noise':>11s}")
    for name, ens, score in (("your model (max-softmax)", yours, "max_prob"),
                             ("head HyperGAN, 20 heads (entropy)", protected, "entropy")):  # fmt: skip
        det = ScoreDetector(ens, score, target_fpr=0.05).fit(data.calib.x)
        clean = det.scores(data.test.x)
        held, rand = (detection_metrics(clean, det.scores(x), det.threshold_, target_fpr=0.05, n_bootstrap=0)
                      for x in (data.ood.x, noise))  # fmt: skip
        acc = float((ens.predict_proba(data.test.x).argmax(-1) == data.test.y).float().mean())
        auroc, tpr, auroc_noise = held["auroc"], held["tpr_at_threshold"], rand["auroc"]
        print(f"{name:34s} {acc:8.3f} {auroc:9.3f} {tpr:7.3f} {auroc_noise:11.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "protected.safetensors"
        save_model(path, hg)  # the HyperGAN and a SHA-256 of your model's weights, not the weights
        load_model(path, module=model)
        other = your_model(data.num_classes)  # same architecture, other weights
        try:
            load_model(path, module=other)
        except ValueError as exc:
            print(f"loading with another model's weights is refused: {str(exc)[:60]}...")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
