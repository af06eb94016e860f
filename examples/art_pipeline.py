"""An ART pipeline around hgdefend, end to end on the embedded digits (CPU, well under a minute).

1. train a small HyperGAN on digits;
2. wrap it as an ART classifier (a fixed bank of K sampled networks);
3. run ART's own FGSM, PGD and AutoAttack on it, unchanged;
4. calibrate hgdefend's entropy detector (an ART EvasionDetector) on clean data at 5 % FPR and see
   what it flags — clean, and each attack's outputs.

Run: python examples/art_pipeline.py [--seed 0] [--images 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from art.attacks.evasion import (
    AutoAttack,
    AutoProjectedGradientDescent,
    FastGradientMethod,
    ProjectedGradientDescent,
)

from hgdefend import HyperGAN, Trainer, load_data
from hgdefend.art import EntropyEvasionDetector, HyperGANClassifier
from hgdefend.recipes import default_recipe, default_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=100, help="test images to attack")
    ap.add_argument("--eps", type=float, default=0.2)
    args = ap.parse_args()
    torch.set_num_threads(1)  # ART makes many small torch calls: one thread is fastest on small CPUs
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    data = load_data("digits")
    hp, cfg = default_recipe(data)
    cfg.seed = args.seed
    hg = HyperGAN(default_spec(data), **hp)
    Trainer(hg, data.train, cfg, progress=False, device="cpu").fit()

    clf = HyperGANClassifier(hg, clip_values=(0.0, 1.0), device_type="cpu", members=10, seed=args.seed)
    x = data.test.x[: args.images].numpy()
    y = data.test.y[: args.images].numpy()
    onehot = np.eye(clf.nb_classes, dtype=np.float32)[y]

    detector = EntropyEvasionDetector(clf, target_fpr=0.05, scoring_seed=args.seed + 1)
    detector.fit(data.calib.x.numpy())  # fresh networks judge the inputs (the paper's protocol)

    eps = args.eps
    attacks = {
        "FGSM": FastGradientMethod(clf, eps=eps),
        "PGD": ProjectedGradientDescent(clf, eps=eps, eps_step=eps / 8, max_iter=20, verbose=False),
        "AutoAttack (APGD-CE)": AutoAttack(
            clf,
            eps=eps,
            eps_step=eps / 8,
            attacks=[
                AutoProjectedGradientDescent(
                    clf, eps=eps, eps_step=eps / 8, max_iter=20, nb_random_init=1, verbose=False
                )
            ],
        ),  # fmt: skip
    }

    def row(name: str, xs: np.ndarray) -> None:
        acc = float((clf.predict(xs).argmax(1) == y).mean())
        flagged = detector.detect(xs)[1]
        linf = float(np.abs(xs - x).reshape(len(x), -1).max(1).mean())
        print(f"{name:24s} accuracy {100 * acc:6.1f} %   flagged {100 * flagged.mean():6.1f} %   "
              f"mean L-inf {linf:.3f}")  # fmt: skip

    print(f"digits, HyperGAN ensemble of {clf.members} (fixed bank), detector threshold "
          f"{detector.threshold:.4g} at 5 % target FPR, eps {eps}")  # fmt: skip
    row("clean", x)
    for name, attack in attacks.items():
        row(name, attack.generate(x=x, y=onehot))
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
