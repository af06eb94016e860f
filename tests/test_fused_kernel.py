"""The ``fused`` member kernel (one Triton kernel per conv → act → 2×2 max-pool block).

On CPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton is
imported, so in a subprocess); on a GPU the compiled kernel is checked against the float32 loop.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hgdefend.targets import GRAD_PRECISION_BOUNDS, PRECISION_BOUNDS, cifar10_paper, digits_small, mnist_paper
from hgdefend.targets.fused import available
from hgdefend.training import TrainConfig
from hgdefend.validation import HgdefendError

ROOT = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(not available(), reason="Triton is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Where a GPU is present the compiled kernel is what runs and is tested; the interpreter of some
# Triton versions (3.6 on the H100 image) cannot iterate range() over a runtime bound.
interpreter = pytest.mark.skipif(
    torch.cuda.is_available() or not available(),
    reason="CPU check (no GPU here: the compiled kernel is tested)",
)


def _interpreted(code: str) -> str:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                         text=True, timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@interpreter
def test_fused_block_equals_conv_act_pool_under_the_interpreter():
    """Shared and grouped inputs, padding, odd map sizes (pool floors), Cout not a power of two,
    both activations: the kernel's output is conv2d → activation → max_pool2d."""
    out = _interpreted("""
        import torch, torch.nn.functional as F
        from hgdefend.targets.fused import conv_act_pool
        torch.manual_seed(0)
        cases = [(3, 2, 1, 32, 28, 5, 0, True, "leaky_relu"), (3, 2, 32, 32, 12, 5, 0, False, "leaky_relu"),
                 (2, 3, 3, 16, 9, 3, 1, True, "relu"), (2, 3, 5, 10, 7, 3, 1, False, "leaky_relu")]
        for b, k, cin, cout, size, ks, pad, shared, act in cases:
            x = torch.randn(b, cin if shared else k * cin, size, size)
            w, bias = torch.randn(k, cout, cin, ks, ks) / (cin * ks * ks) ** 0.5, torch.randn(k, cout)
            ref = F.conv2d(x, w.reshape(k * cout, cin, ks, ks), bias.reshape(-1), padding=pad,
                           groups=1 if shared else k)
            ref = F.max_pool2d(F.leaky_relu(ref, 0.01) if act == "leaky_relu" else F.relu(ref), 2)
            got = conv_act_pool(x, w, bias, shared=shared, padding=pad, activation=act, precision="ieee")
            assert got.shape == ref.shape, (got.shape, ref.shape)
            err = float((got - ref).abs().max() / ref.abs().max())
            assert err < 1e-5, err
            print("ok", err)
    """)
    assert out.count("ok") == 4


@interpreter
def test_large_calls_are_split_into_launches_that_give_the_same_result():
    """Members beyond one grid axis, and batches beyond 32-bit position counts, are launched in
    slices (limits lowered here so that small calls split), with the same result up to round-off."""
    out = _interpreted("""
        import torch
        from hgdefend.targets import fused
        torch.manual_seed(0)
        for shared in (True, False):
            k, cin = 5, 3
            x = torch.randn(7, cin if shared else k * cin, 10, 10)
            w, b = torch.randn(k, 16, cin, 3, 3), torch.randn(k, 16)
            kw = dict(shared=shared, padding=1, activation="relu", precision="ieee")
            whole = fused.conv_act_pool(x, w, b, **kw)
            fused.MAX_MEMBERS_PER_LAUNCH, fused.INT32_MAX = 2, 25 * (64 + 2)  # 2 members, 2 images a launch
            split = fused.conv_act_pool(x, w, b, **kw)
            fused.MAX_MEMBERS_PER_LAUNCH, fused.INT32_MAX = 65_535, 2**31 - 1
            # the same sums; a matmul of another tile shape may round differently
            err = float((whole - split).abs().max() / whole.abs().max())
            assert err < 1e-6, err
            print("ok")
    """)
    assert out.count("ok") == 2


@interpreter
def test_fused_gradients_equal_the_loop_under_the_interpreter():
    """Attack mode (inputs only) and training (weights, biases and inputs): gradients of an ensemble
    loss routed through each pooling window's saved argmax. Random inputs: where a window's values
    tie exactly, another summation order may pick another position (both are subgradients)."""
    out = _interpreted("""
        import torch
        from hgdefend.targets import cifar10_paper, digits_small, mnist_paper
        for spec in (mnist_paper(), cifar10_paper(), digits_small()):
            p0 = spec.init_params(3, torch.Generator().manual_seed(0))
            x = torch.rand(4, *spec.input_shape, generator=torch.Generator().manual_seed(1))
            y = torch.tensor([0, 3, 5, 9])
            for weights in (False, True):
                grads = []
                for strategy in ("loop", "fused", "fused+tf32"):
                    p = {n: t.clone().requires_grad_(weights) for n, t in p0.items()}
                    xa = x.clone().requires_grad_()
                    logits = spec.forward(p, xa, strategy=strategy)
                    loss = torch.nn.functional.cross_entropy(logits.mean(0), y)
                    grads.append(torch.autograd.grad(loss, [xa, *p.values()] if weights else [xa]))
                for got in grads[1:]:
                    for g, ref in zip(got, grads[0], strict=True):
                        err = float((g - ref).norm() / ref.norm())
                        assert err < 1e-5, (spec.name, weights, err)
            print("ok", spec.name)
    """)
    assert out.count("ok") == 3


@interpreter
def test_training_with_the_fused_kernel_follows_grouped_under_the_interpreter():
    out = _interpreted("""
        import torch
        from hgdefend import HyperGAN, TrainConfig, Trainer, load_data
        from hgdefend.targets import digits_small
        data = load_data("digits")
        weights = {}
        for strategy in ("grouped", "fused"):
            torch.manual_seed(0)
            hg = HyperGAN(digits_small(), noise_dim=32, code_dim=16, hidden=32)
            cfg = TrainConfig(steps=3, nets_per_step=4, batch_size=16, pretrain_max_steps=2,
                              strategy=strategy)
            Trainer(hg, data.train, cfg, progress=False, device="cpu").fit()
            weights[strategy] = hg.state_dict()
        a, b = weights["grouped"], weights["fused"]
        moved = max(float((a[n] - b[n]).abs().max()) for n in a)
        assert moved < 1e-5, moved
        print("ok", moved)
    """)
    assert out.startswith("ok")


@interpreter
def test_fused_strategy_equals_the_loop_on_the_builtin_nets_under_the_interpreter():
    out = _interpreted("""
        import torch
        from hgdefend.targets import cifar10_paper, digits_small, mnist_paper
        for spec in (mnist_paper(), cifar10_paper(), digits_small()):
            p = spec.init_params(3, torch.Generator().manual_seed(0))
            x = torch.rand(4, *spec.input_shape)
            with torch.no_grad():
                ref = spec.forward(p, x, strategy="loop")
                for strategy in ("fused", "fused+cl"):
                    err = float((spec.forward(p, x, strategy=strategy) - ref).abs().max() / ref.abs().max())
                    assert err < 1e-5, (spec.name, strategy, err)
            print("ok", spec.name)
    """)
    assert out.count("ok") == 3


@needs_triton
def test_fused_is_refused_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    spec = mnist_paper()
    p = spec.init_params(2)
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="'fused' needs a CUDA device"), torch.no_grad():
        spec.forward(p, x, strategy="fused")
    with pytest.raises(ValueError, match="'fused' is already one kernel"):
        spec.forward(p, x, strategy="fused+compile")
    with pytest.raises(HgdefendError, match="differentiable once"):
        TrainConfig(strategy="fused+tf32", diversity="gradient", diversity_weight=1.0)


def test_fused_block_arguments_are_checked():
    from hgdefend.targets.fused import conv_act_pool

    w, b = torch.zeros(2, 4, 1, 3, 3), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="activation"):
        conv_act_pool(torch.zeros(1, 1, 8, 8), w, b, shared=True, padding=0, activation="tanh")
    with pytest.raises(ValueError, match="x: expected 2 channels"):
        conv_act_pool(torch.zeros(1, 1, 8, 8), w, b, shared=False, padding=0, activation="relu")
    with pytest.raises(ValueError, match="precision"):
        conv_act_pool(torch.zeros(1, 1, 8, 8), w, b, shared=True, padding=0, activation="relu", precision="x")


@needs_cuda
@needs_triton
@pytest.mark.parametrize("spec_fn", [mnist_paper, cifar10_paper, digits_small])
def test_fused_on_the_gpu_stays_inside_the_documented_error(spec_fn, monkeypatch):
    # the loop's backward follows the global flags: IEEE float32 for the reference
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    spec = spec_fn()
    p = {n: t.cuda() for n, t in spec.init_params(37, torch.Generator().manual_seed(1)).items()}
    x = torch.rand(129, *spec.input_shape, device="cuda")
    with torch.no_grad():
        ref = spec.forward(p, x, strategy="loop")
        for strategy, bound in (("fused", PRECISION_BOUNDS["fp32"]), ("fused+tf32", PRECISION_BOUNDS["tf32"]),
                                ("fused+cl+tf32", PRECISION_BOUNDS["tf32"]),
                                ("fused+bf16", PRECISION_BOUNDS["bf16"])):  # fmt: skip
            out = spec.forward(p, x, strategy=strategy)
            assert out.dtype == torch.float32 and out.shape == ref.shape
            err = float((out - ref).abs().max() / ref.abs().max())
            assert err <= bound, (strategy, err)
    y = torch.randint(spec.num_outputs, (len(x),), device="cuda")

    def input_grad(strategy: str) -> torch.Tensor:
        xa = x.clone().requires_grad_()
        loss = torch.nn.functional.cross_entropy(spec.forward(p, xa, strategy=strategy).mean(0), y)
        return torch.autograd.grad(loss, xa)[0]

    ref = input_grad("loop")
    for strategy, bound in (
        ("fused", GRAD_PRECISION_BOUNDS["fp32"]),
        ("fused+tf32", GRAD_PRECISION_BOUNDS["tf32"]),
    ):
        err = float((input_grad(strategy) - ref).norm() / ref.norm())
        assert err <= bound, (strategy, err)
    # training: the weights' gradients too
    grads = {}
    for strategy in ("loop", "fused"):
        w = {n: t.clone().requires_grad_() for n, t in p.items()}
        loss = torch.nn.functional.cross_entropy(spec.forward(w, x, strategy=strategy).mean(0), y)
        grads[strategy] = torch.autograd.grad(loss, list(w.values()))
    for g, ref in zip(grads["fused"], grads["loop"], strict=True):
        assert float((g - ref).norm() / ref.norm()) <= GRAD_PRECISION_BOUNDS["fp32"]


@interpreter
def test_fused_kernel_benchmark_quick():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fused_kernel.py"), "--quick"],
                         capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert '"fused+tf32"' in out.stdout and '"best_launch"' in out.stdout


def test_the_automatic_choice_falls_back_where_the_kernel_cannot_run(monkeypatch):
    """A GPU whose Triton cannot compile scores with grouped and one warning, not a failure per call."""
    from hgdefend.targets import fused
    from hgdefend.targets.strategy import choose_strategy

    monkeypatch.delenv("HGDEFEND_STRATEGY", raising=False)
    monkeypatch.setattr(fused, "_USABLE", {})
    monkeypatch.setattr(fused, "available", lambda: True)

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(fused, "conv_act_pool", broken)
    with pytest.warns(RuntimeWarning, match="not usable on cpu.*no compiler"):
        assert fused.usable("cpu") is False
    assert fused.usable("cpu") is False  # checked once per device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(fused, "usable", lambda device: False)
    assert choose_strategy("cuda", "score") == "grouped+tf32"
    monkeypatch.setattr(fused, "usable", lambda device: True)
    assert choose_strategy("cuda", "score") == "fused+tf32"


@interpreter
def test_the_kernel_is_usable_under_the_interpreter():
    out = _interpreted("""
        from hgdefend.targets.fused import usable
        print("usable", usable("cpu"))
    """)
    assert "usable True" in out
