"""Latency of an exported ONNX ensemble (onnxruntime, CPU) vs the same ensemble in torch (CPU).

Both sides compute the same outputs — member logits, mean probabilities, predicted class, the four
scores and the flag — for the same frozen weights: torch runs :class:`EnsembleGraph` (the module
that gets exported: the library's grouped-conv member forward + the score functions) under
``torch.inference_mode``; onnxruntime runs the file :func:`export_onnx` wrote (after its parity
check) through a plain ``InferenceSession.run``. Input validation is excluded on both sides.

Weights: the paper's MNIST net (``mnist_paper``) with K independent Kaiming-uniform
initialisations (random, untrained — latency does not depend on the values). Threads are set
deliberately and equal on both sides (torch intra-op = onnxruntime intra-op; inter-op 1). Timed
calls alternate between the engines so that background load hits them alike.

``--kernels grouped unfold loop`` also exports the same weights without grouped convolutions
(``export_onnx(kernel=...)``: members folded into matmuls, or unrolled) and times each file beside
the default (``relative_to_grouped``: grouped median / this median). ``--no-torch`` skips the torch
side; ``--cuda`` adds onnxruntime's CUDA provider with I/O binding (``OnnxDetector(device="cuda")``)
where a GPU is usable.

    python benchmarks/export_latency.py --threads 2 --out benchmarks/export_latency.json
    python benchmarks/export_latency.py --threads 1 --kernels grouped unfold loop --no-torch
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from _common import time_calls

from hgdefend.ensemble import SampledEnsemble
from hgdefend.export import EXPORT_KERNELS, EnsembleGraph, OnnxDetector, export_onnx
from hgdefend.targets import mnist_paper

# every engine timed here returns when its work is done (onnxruntime runs synchronously, also with
# I/O binding; the torch reference is on the CPU): time_calls has nothing to synchronise
CPU = torch.device("cpu")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def session(path: str, threads: int, level: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-reps", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--ort-levels", nargs="+", default=["ORT_ENABLE_ALL"],
                    help="onnxruntime graph optimisation levels to time (ORT_DISABLE_ALL, "
                         "ORT_ENABLE_BASIC, ORT_ENABLE_EXTENDED, ORT_ENABLE_ALL).")  # fmt: skip
    ap.add_argument("--exporter", choices=["dynamo", "legacy"], default="dynamo")
    ap.add_argument(
        "--kernels",
        nargs="+",
        choices=EXPORT_KERNELS,
        default=["grouped"],
        help="Member layouts to export and time (unfold, loop: no grouped convolutions).",
    )
    ap.add_argument("--no-torch", action="store_true", help="Time onnxruntime only.")
    ap.add_argument(
        "--cuda",
        action="store_true",
        help="Also time onnxruntime's CUDA provider with I/O binding (needs a GPU).",
    )
    ap.add_argument("--out", default=None, help="Also write the JSON here.")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    spec = mnist_paper()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.members:
            params = spec.init_params(k, torch.Generator().manual_seed(k))
            ens = SampledEnsemble(spec, params, seed=k, kind="random_init")
            files = {}
            for kernel in args.kernels:
                path = os.path.join(tmp, f"k{k}_{kernel}.onnx")
                res = export_onnx(ens, None, path, threshold=1.0, exporter=args.exporter, kernel=kernel)
                files[kernel] = path
                row = {"members": k, "kernel": kernel, "export_seconds": res.export_seconds}
                rows.append(
                    {**row, "onnx_mb": res.size_bytes / 1e6, "max_abs_prob_diff": res.max_abs_prob_diff}
                )
            graph = EnsembleGraph(ens, "entropy", 1.0).eval()
            sessions = {(kernel, lvl): session(path, args.threads, lvl)
                        for kernel, path in files.items() for lvl in args.ort_levels}  # fmt: skip
            cuda = (
                {kernel: OnnxDetector(path, device="cuda") for kernel, path in files.items()}
                if args.cuda
                else {}
            )
            for b in args.batches:
                x = torch.rand(b, *spec.input_shape, generator=torch.Generator().manual_seed(b))
                xn = x.numpy()

                def run_torch(x=x, graph=graph):
                    with torch.inference_mode():
                        graph(x)

                engines = {} if args.no_torch else {("torch", "grouped"): run_torch}
                for (kernel, lvl), s in sessions.items():
                    engines[(f"onnxruntime[{lvl}]", kernel)] = lambda s=s, xn=xn: s.run(None, {"x": xn})
                for kernel, det in cuda.items():  # I/O binding: input copied once, outputs on the GPU
                    engines[("onnxruntime[CUDA, io_binding]", kernel)] = lambda d=det, xn=xn: d._run_batch(xn)
                # Alternate engines round by round so background load affects each alike.
                samples: dict[tuple[str, str], list[float]] = {key: [] for key in engines}
                for _round in range(2):
                    for key, fn in engines.items():
                        reps = max(1, args.min_reps // 2 + 1)
                        t = time_calls(fn, CPU, min_time=args.min_seconds / 2, min_reps=reps, max_reps=10**9)
                        samples[key] += t["times"]
                med = {key: 1e3 * statistics.median(ts) for key, ts in samples.items()}
                torch_ms = med.get(("torch", "grouped"))
                for (name, kernel), ts in samples.items():
                    ms, grouped_ms = med[(name, kernel)], med.get((name, "grouped"))
                    rows.append({
                        "members": k, "batch": b, "engine": name, "kernel": kernel,
                        "median_ms": round(ms, 3), "min_ms": round(1e3 * min(ts), 3), "reps": len(ts),
                        "member_images_per_s": round(k * b / (ms / 1e3)),
                        "speedup_vs_torch": None if torch_ms is None else round(torch_ms / ms, 3),
                        "relative_to_grouped": None if grouped_ms is None else round(grouped_ms / ms, 3),
                    })  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
    out = {
        "benchmark": "export_latency",
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": f"CPU ({cpu_name()}, {os.cpu_count()} logical cores)",
        "threads": args.threads,
        "weights": "mnist_paper, K independent Kaiming-uniform initialisations (untrained)",
        "exporter": args.exporter,
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__},
        "results": rows,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
