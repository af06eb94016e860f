"""Transfer between sampled networks: how many *other* networks an example crafted against one
network fools (the paper's Figure 4 measure: 50–70 % for its HyperGAN; lower means the networks
differ in the ways that matter against an attacker)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .pgd import PGD


@torch.no_grad()
def _member_predictions(judges: Any, x: Tensor) -> Tensor:
    return judges.member_logits(x).argmax(-1)  # [K, B]


def transfer_rate(source: Any, judges: Any, x: Tensor, y: Tensor, *, eps: float = 0.3, steps: int = 40,
                  seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Fixed-budget L∞ PGD against ``source`` (one network), judged by every network in ``judges``.

    Counted on inputs the source classifies correctly and the attack fools: per input, the share
    of judges that were right on the clean input and are wrong on the adversarial one; the mean
    over those inputs is the transfer rate.
    """
    x, y = source.check_inputs(x), y.to(source.device)
    with torch.no_grad():
        source_ok = source.member_logits(x).argmax(-1)[0] == y
    x_adv = PGD(source, eps, None, steps, seed=seed)(x, y)
    with torch.no_grad():
        fooled = (source.member_logits(x_adv).argmax(-1)[0] != y) & source_ok
    clean_ok = _member_predictions(judges, x) == y  # [K, B]
    adv_wrong = _member_predictions(judges, x_adv) != y
    per_input = (clean_ok & adv_wrong).sum(0).float() / clean_ok.sum(0).clamp_min(1).float()
    n = int(fooled.sum())
    return {
        "eps": float(eps),
        "steps": int(steps),
        "inputs": int(len(x)),
        "source_correct": int(source_ok.sum()),
        "source_fooled": n,
        "judges": int(clean_ok.shape[0]),
        "transfer_rate": float(per_input[fooled].mean()) if n else float("nan"),
    }
