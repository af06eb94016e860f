"""Member-images per second of every member-evaluation strategy vs the per-network loop, same run.

For each ensemble size K, batch size B, mode and strategy, times ``SampledEnsemble.forward_logits``
(the path training, scoring and attacks use, chunking included) on the paper's MNIST net and prints
JSON. Modes: ``score`` (forward, no gradients), ``train`` (forward + backward to the weights),
``attack`` (forward + backward to the inputs). Combinations predicted to exceed ``--time-cap-s``
per call (from the rate the same strategy reached on a smaller case) are recorded as skipped, with
the reason.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the case minus what was allocated
before it; on CPU the process's resident-set high-water mark (``ru_maxrss``) after the case — it
only grows, so it shows the largest case so far, not this case alone.

    python benchmarks/members.py --quick                 # CPU-sized grid
    python benchmarks/members.py --k 10,100,1000 --batch 1,256,4096 --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch
from _common import device_name, time_calls

from hgdefend.ensemble import SampledEnsemble
from hgdefend.targets import BUILTIN_SPECS, choose_strategy, parse_strategy

CPU_STRATEGIES = ["grouped", "grouped+cl", "unfold", "vmap", "grouped+bf16", "unfold+bf16", "loop"]
CUDA_STRATEGIES = ["grouped", "grouped+cl", "unfold", "vmap", "grouped+tf32", "unfold+tf32",
                   "grouped+bf16", "unfold+bf16", "grouped+compile", "unfold+compile", "unfold+tf32+compile",
                   "grouped+graph", "unfold+graph", "loop"]  # fmt: skip


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def one_call(ens: SampledEnsemble, x: torch.Tensor, mode: str, strategy: str) -> None:
    if mode == "score":
        with torch.no_grad():
            ens.forward_logits(x, strategy=strategy)
        return
    if mode == "attack":
        x = x.detach().requires_grad_(True)
    out = ens.forward_logits(x, strategy=strategy)
    torch.log_softmax(out, -1)[..., 0].sum().backward()


def measure(ens, x, mode, strategy, dev, min_time: float, max_reps: int) -> dict:
    """Median seconds per call after one warm-up call (compile / autotune happen there)."""
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t = time_calls(
        lambda: one_call(ens, x, mode, strategy), dev, min_time=min_time, min_reps=2, max_reps=max_reps
    )
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
        mem = {"peak_mib": round(peak, 1), "peak_measure": "cuda max_memory_allocated - before"}
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        mem = {"peak_mib": round(rss, 1), "peak_measure": "process ru_maxrss (high-water mark)"}
    return {
        "seconds_per_call": t["median_s"],
        "first_call_s": round(t["first_s"], 4),
        "reps": t["reps"],
        **mem,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--target", default="mnist_paper", choices=sorted(BUILTIN_SPECS))
    ap.add_argument("--k", default="10,100,1000", help="ensemble sizes")
    ap.add_argument("--batch", default="1,256,4096", help="batch sizes")
    ap.add_argument("--modes", default="score,train", help="score, train, attack")
    ap.add_argument("--strategies", default=None,
                    help="comma list; 'auto' = the library's choice (default: all that fit)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="CPU-sized grid: K 10,100,1000 x B 1,256, cap 10 s")
    ap.add_argument("--time-cap-s", type=float, default=30.0, help="skip calls predicted to take longer")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per case")
    ap.add_argument("--max-reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=None, help="member-images per call (default: automatic)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       "cpu" if args.device == "auto" else args.device)  # fmt: skip
    if args.quick:
        args.batch, args.time_cap_s = "1,256", min(args.time_cap_s, 10.0)
    ks, bs, modes = ints(args.k), ints(args.batch), args.modes.split(",")
    strategies = (args.strategies.split(",") if args.strategies else
                  CUDA_STRATEGIES if dev.type == "cuda" else CPU_STRATEGIES)  # fmt: skip
    for s in strategies:
        if s != "auto":
            parse_strategy(s)
    spec = BUILTIN_SPECS[args.target]()
    gen = torch.Generator().manual_seed(0)
    all_params = {n: t.to(dev) for n, t in spec.init_params(max(ks), gen).items()}
    x_all = torch.rand(max(bs), *spec.input_shape, generator=gen).to(dev)
    rates: dict[tuple[str, str], float] = {}
    results = []
    for mode in modes:
        for k, b in sorted(((k, b) for k in ks for b in bs), key=lambda kb: kb[0] * kb[1]):
            params = {n: t[:k].clone().requires_grad_(mode == "train") for n, t in all_params.items()}
            ens = SampledEnsemble(spec, params)
            if args.chunk:
                ens.member_images_per_chunk = args.chunk
            x = x_all[:b]
            row_loop = None
            rows = []
            for strat in strategies:
                if strat != "auto" and parse_strategy(strat).cuda_graph and mode != "score":
                    continue  # CUDA graphs are measured for fixed-shape scoring only
                case = {"mode": mode, "k": k, "batch": b, "strategy": strat,
                        "chunk": ens.chunk_size()}  # fmt: skip
                if strat == "auto":
                    work = min(b, max(1, ens.chunk_size() // k)) * spec.activations_per_input
                    case["auto_resolved"] = choose_strategy(dev, mode, work)
                rate = rates.get((mode, strat))
                if rate is not None and k * b / rate > args.time_cap_s:
                    case["skipped"] = (f"predicted {k * b / rate:.0f} s per call from {rate:.0f} "
                                       f"member-images/s > cap {args.time_cap_s:.0f} s")  # fmt: skip
                    rows.append(case)
                    continue
                try:
                    m = measure(ens, x, mode, strat, dev, args.min_time, args.max_reps)
                except Exception as exc:  # a strategy unsupported on this stack is a result, not a crash
                    case["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    rows.append(case)
                    continue
                rate = k * b / m["seconds_per_call"]
                rates[(mode, strat)] = rate
                case.update(m, member_images_per_s=round(rate))
                case["seconds_per_call"] = round(m["seconds_per_call"], 5)
                if strat == "loop":
                    row_loop = case
                rows.append(case)
            for case in rows:
                if row_loop and "member_images_per_s" in case:
                    ratio = case["member_images_per_s"] / row_loop["member_images_per_s"]
                    case["speedup_vs_loop"] = round(ratio, 2)
            results.extend(rows)
            print(json.dumps({"progress": f"{mode} K={k} B={b}", "best": max(
                (r for r in rows if "member_images_per_s" in r), key=lambda r: r["member_images_per_s"],
                default={}).get("strategy")}), file=sys.stderr)  # fmt: skip
    out = {
        "benchmark": "members",
        "command": " ".join(["benchmarks/members.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": device_name(dev),
        "torch": torch.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "net": f"{spec.name} ({spec.activations_per_input} activations per member-image)",
        "results": results,
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
