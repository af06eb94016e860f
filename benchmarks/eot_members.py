"""How many networks per step the targeted attack needs on a diverse model (issue 28).

On the off-data MNIST model (900 s, ``--diversity offdata --diversity-weight 0.3``), eps 0.3, the
first 50 test inputs: targeted APGD-CE-T with EOT, judged by an unseen 20-network ensemble (seed 1)
at the 5 % FPR entropy threshold. Prints one line per setting: (share through by the judge, share the
attacker's own draws said was through, seconds). The first five settings and the last three were run
as two processes (2026-12-08, 04:30 and 04:35 UTC, one thread, one other job on the second core);
their output is ``benchmarks/results/eot_members_offdata_cpu.txt``.

    python benchmarks/eot_members.py runs/m_offdata/model.safetensors
"""

import sys
import time

import torch

from hgdefend import load_data, load_model
from hgdefend.attacks import APGDCET, FreshSamples
from hgdefend.detectors.detector import conformal_threshold
from hgdefend.detectors.scores import predictive_entropy
from hgdefend.probabilities import predict

# (name, targets, steps, lam, threshold factor, eot_iter): the eight settings, in the order run
SETTINGS = [
    ("ce-t t3 s20", 3, 20, 0.0, 1.0, 1),
    ("ce-t t3 s20 thr*0.5", 3, 20, 0.0, 0.5, 1),
    ("ce-t t3 s20 lam1 thr*0.5", 3, 20, 1.0, 0.5, 1),
    ("ce-t t3 s20 eot2", 3, 20, 0.0, 1.0, 2),
    ("ce-t t3 s100", 3, 100, 0.0, 1.0, 1),
    ("ce-t t3 s20 eot4", 3, 20, 0.0, 1.0, 4),
    ("ce-t t2 s20 eot2", 2, 20, 0.0, 1.0, 2),
    ("ce-t t2 s10 eot4", 2, 10, 0.0, 1.0, 4),
]


def main() -> None:
    torch.set_num_threads(1)
    hg = load_model(sys.argv[1]).hypergan
    d = load_data("mnist", root="../shared/data")
    judge_ens = hg.ensemble(20, seed=1)
    with torch.no_grad():
        logits = judge_ens.member_logits(d.calib.x, batch_size=500)
    thr = conformal_threshold(predictive_entropy(logits).numpy(), 0.05)
    x, y = d.test.x[:50], d.test.y[:50]

    def judge(xa: torch.Tensor) -> float:
        with torch.no_grad():
            z = judge_ens.member_logits(xa)
        return float(((predict(z) != y) & (predictive_entropy(z) <= thr)).float().mean())

    for name, targets, steps, lam, factor, eot_iter in SETTINGS:
        t = time.time()
        atk = APGDCET(FreshSamples(hg, 10, seed=2), 0.3, steps, targets=targets, score="entropy", lam=lam,
                      threshold=thr * factor, eot_iter=eot_iter)  # fmt: skip
        xa = atk(x, y)
        through = (judge(xa), float(atk.last_info["evaded"].float().mean()), round(time.time() - t, 1))
        print(name, through, flush=True)


if __name__ == "__main__":
    main()
