"""The fused ``conv → act → 2×2 max-pool`` kernel against cuDNN, per block and end to end (JSON).

1. Per block of the paper's MNIST net at K members × B images (conv1 on the shared input, conv2
   grouped): what the ``grouped`` kernel runs (cuDNN conv2d, then max_pool2d, then leaky_relu) against
   :func:`hgdefend.targets.fused.conv_act_pool`, for a sweep of launch settings (block of pooled
   positions, warps, pipeline stages), with the error against IEEE-float32 cuDNN beside.
2. The whole score-mode forward with the fastest setting (summed over both blocks): ``grouped+tf32``
   (the CUDA default before this kernel), ``fused+tf32``, ``fused`` (IEEE float32) and the
   per-network ``loop`` — member-images/s, and the logit error max |Δ| / max |logit| against the
   float32 loop (PRECISION_BOUNDS in hgdefend.targets.strategy is what the tests allow).
3. Attacks: PGD-40 (eps 0.3, step 0.01, a plain gradient-sign loop) against 10 members on the same
   images per strategy (the fused kernel's input gradient routes through the saved argmax of each
   pooling window), and each strategy's input gradient against the float32 loop's.
4. One HyperGAN training step (32 networks × 100 images) with ``grouped+tf32`` and ``fused+tf32``,
   eager and (on CUDA) captured as a CUDA graph.

    python benchmarks/fused_kernel.py --out benchmarks/results/fused_kernel.json    # a CUDA GPU
    python benchmarks/fused_kernel.py --quick   # CPU under TRITON_INTERPRET=1, tiny: what the tests run
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

if "--quick" in sys.argv:  # before Triton is first imported: run its kernels on CPU tensors
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, run_record, time_calls  # noqa: E402

from hgdefend.targets import fused, mnist_paper  # noqa: E402
from hgdefend.targets.strategy import _precision, parse_strategy  # noqa: E402

SWEEP = {"block_m": (32, 64, 128), "num_warps": (4, 8), "num_stages": (2, 3)}


def cudnn_block(h, w, b, shared: bool, precision: str, dev: torch.device):
    """What the grouped kernel runs for one block: conv2d, max-pool, leaky ReLU."""
    k, cout = w.shape[:2]
    with _precision(parse_strategy("grouped+tf32" if precision == "tf32" else "grouped"), dev):
        out = F.conv2d(h, w.reshape(k * cout, *w.shape[2:]), b.reshape(-1), groups=1 if shared else k)
    return F.leaky_relu(F.max_pool2d(out, 2), 0.01)


def _fused_cell(h, w, b, shared: bool, prec: str, cfg: dict, ref, dev: torch.device, min_time: float) -> dict:
    """One launch setting of the fused kernel on one block: its error and milliseconds."""

    def call():
        return fused.conv_act_pool(h, w, b, shared=shared, padding=0, activation="leaky_relu", precision=prec,
                                   **cfg)  # fmt: skip

    cell: dict = dict(cfg)
    try:
        cell[f"{prec}_rel_err"] = rel_err(call(), ref)
        cell[f"{prec}_ms"] = round(1e3 * time_calls(call, dev, min_time=min_time)["median_s"], 3)
    except Exception as exc:  # a launch setting the GPU cannot run: recorded, not fatal
        cell[f"{prec}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return cell


def pgd_rows(spec, gen: torch.Generator, dev: torch.device, x: torch.Tensor, args) -> dict:
    """PGD-40 against 10 members per strategy (each a plain gradient-sign loop, as gpu_check.py's),
    and each strategy's input gradient against the float32 loop's (relative L2 error)."""
    params = {n: t.to(dev) for n, t in spec.init_params(min(10, max(2, args.k)), gen).items()}
    y = torch.randint(spec.num_outputs, (len(x),), generator=gen).to(dev)
    steps = 2 if args.quick else 40

    def grad(strategy: str, xa: torch.Tensor) -> torch.Tensor:
        xa = xa.detach().requires_grad_()
        logits = spec.forward(params, xa, strategy=strategy)
        loss = F.cross_entropy(logits.log_softmax(-1).exp().mean(0).log(), y)
        return torch.autograd.grad(loss, xa)[0]

    def pgd(strategy: str) -> torch.Tensor:
        xa = x.clone()
        for _ in range(steps):
            xa = (x + (xa + 0.01 * grad(strategy, xa).sign() - x).clamp(-0.3, 0.3)).clamp(0, 1)
        return xa

    ref = grad("loop", x)
    rows: dict = {"steps": steps, "members": next(iter(params.values())).shape[0], "images": len(x)}
    for strategy in ("grouped+tf32", "fused+tf32", "fused", "loop"):
        err = float((grad(strategy, x) - ref).norm() / ref.norm())
        secs = time_calls(lambda s=strategy: pgd(s), dev, min_time=args.min_time)["median_s"]
        rows[strategy] = {"seconds": round(secs, 4), "input_grad_rel_err_vs_fp32_loop": err}
    return rows


def train_rows(spec, gen: torch.Generator, dev: torch.device, args) -> dict:
    """Milliseconds of one training step per strategy (:func:`train_mnist.time_steps`: steps queued
    back to back), eager and, on CUDA, captured as a CUDA graph."""
    from train_mnist import time_steps

    from hgdefend import HyperGAN, TrainConfig
    from hgdefend.data import Split

    nets, batch, n = (2, 4, 1) if args.quick else (32, 100, 30)
    data = type("D", (), {})()
    data.train = Split(torch.rand(max(200, batch), *spec.input_shape, generator=gen),
                       torch.randint(spec.num_outputs, (max(200, batch),), generator=gen))  # fmt: skip
    torch.manual_seed(args.seed)
    hg = HyperGAN(spec, noise_dim=32, code_dim=16, hidden=32) if args.quick else HyperGAN(spec)
    cfg = TrainConfig(nets_per_step=nets, batch_size=batch, lr_schedule="constant")
    rows: dict = {"nets_per_step": nets, "batch": batch}
    for graphed in (False, True) if dev.type == "cuda" else (False,):
        for strategy in ("grouped+tf32", "fused+tf32"):
            name = f"{strategy}{' graphed' if graphed else ''}"
            try:
                rows[name] = round(1e3 * time_steps(hg, data, cfg, strategy, dev, n, graphed=graphed,
                                                    pipelined=True), 3)  # fmt: skip
            except Exception as exc:  # e.g. a capture the fused kernel's backward breaks: recorded
                rows[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return rows


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds of timed calls per case")
    ap.add_argument("--quick", action="store_true", help="CPU, TRITON_INTERPRET=1, K=2, B=2, one setting")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    started = time.perf_counter()
    if args.quick:
        args.k, args.batch, args.min_time = 2, 2, 0.0
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    if dev.type != "cuda" and not args.quick:
        raise SystemExit("fused_kernel.py: needs a CUDA GPU (or --quick: the CPU interpreter)")
    spec = mnist_paper()
    gen = torch.Generator().manual_seed(args.seed)
    params = {n: t.to(dev) for n, t in spec.init_params(args.k, gen).items()}
    x = torch.rand((args.batch, *spec.input_shape), generator=gen).to(dev)
    sweep = [dict(zip(SWEEP, v, strict=True)) for v in itertools.product(*SWEEP.values())]
    if args.quick:
        sweep = sweep[:1]

    # ---- 1. per block
    w1, b1, w2, b2 = params["0.weight"], params["0.bias"], params["3.weight"], params["3.bias"]
    with torch.no_grad():
        h1 = cudnn_block(x, w1, b1, True, "ieee", dev)
        blocks = {"conv1 (shared input)": (x, w1, b1, True), "conv2 (grouped)": (h1, w2, b2, False)}
        rows: list[dict] = []
        for name, (h, w, b, shared) in blocks.items():
            ref = cudnn_block(h, w, b, shared, "ieee", dev)
            row: dict = {"block": name, "input": list(h.shape), "output": list(ref.shape)}
            for prec in ("tf32", "ieee"):

                def call(h=h, w=w, b=b, shared=shared, prec=prec):
                    return cudnn_block(h, w, b, shared, prec, dev)

                row[f"cudnn_{prec}_rel_err"] = rel_err(call(), ref)
                row[f"cudnn_{prec}_ms"] = round(
                    1e3 * time_calls(call, dev, min_time=args.min_time)["median_s"], 3
                )
            row["fused"] = [_fused_cell(h, w, b, shared, "tf32", c, ref, dev, args.min_time) for c in sweep]
            rows.append(row)

    def total(i: int, prec: str) -> float:
        ms = [r["fused"][i].get(f"{prec}_ms") for r in rows]
        return sum(ms) if all(isinstance(m, float) for m in ms) else float("inf")

    best = min(range(len(sweep)), key=lambda i: total(i, "tf32"))
    fused.LAUNCH.update(sweep[best])
    with torch.no_grad():  # IEEE float32 products at the best setting only (each setting compiles)
        for row, (h, w, b, shared) in zip(rows, blocks.values(), strict=True):
            ref = cudnn_block(h, w, b, shared, "ieee", dev)
            cfg = sweep[best]
            row["fused_ieee_at_best"] = _fused_cell(h, w, b, shared, "ieee", cfg, ref, dev, args.min_time)

    # ---- 2. the whole forward
    n = args.k * args.batch
    with torch.no_grad():
        ref = spec.forward(params, x, strategy="loop")
        whole: dict = {}
        for strategy in ("grouped+tf32", "fused+tf32", "fused", "auto", "loop"):
            out = spec.forward(params, x, strategy=strategy)
            secs = time_calls(
                lambda s=strategy: spec.forward(params, x, strategy=s), dev, min_time=args.min_time
            )["median_s"]
            whole[strategy] = {"seconds_per_call": round(secs, 5), "member_images_per_s": round(n / secs),
                               "logit_rel_err_vs_fp32_loop": rel_err(out, ref)}  # fmt: skip
    loop_s = whole["loop"]["seconds_per_call"]
    for r in whole.values():
        r["speedup_vs_loop"] = round(loop_s / r["seconds_per_call"], 2)
    # ---- 3. attacks: PGD-40 (eps 0.3) against 10 members on the same images, the input gradient
    attack = pgd_rows(spec, gen, dev, x, args)
    # ---- 4. one HyperGAN training step (32 networks x 100 images; eager, and on CUDA as a graph)
    train = train_rows(spec, gen, dev, args)

    from hgdefend.targets import choose_strategy

    whole["auto"]["is"] = choose_strategy(dev, "score", args.batch * spec.activations_per_input)
    result = {
        **run_record("fused_kernel", args, dev, started),
        "net": "mnist_paper",
        "k": args.k,
        "batch": args.batch,
        "blocks": rows,
        "best_launch": {**sweep[best], "tf32_ms_both_blocks": round(total(best, "tf32"), 3)},
        "forward": whole,
        "pgd40_10members": attack,
        "train_step_ms": train,
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    emit(result, args.out)


if __name__ == "__main__":
    main()
