"""Every member-evaluation strategy computes the same function as the per-network loop."""

import os

import pytest
import torch

from hgdefend import targets as T
from hgdefend.ensemble import SampledEnsemble, auto_member_images_per_chunk
from hgdefend.targets import (
    GRAD_PRECISION_BOUNDS,
    PRECISION_BOUNDS,
    TargetSpec,
    choose_strategy,
    mode_of,
    parse_strategy,
)
from hgdefend.training import TrainConfig

FP32 = ["grouped", "grouped+cl", "unfold", "unfold+cl", "vmap", "grouped+tf32", "unfold+tf32"]
BF16 = ["grouped+bf16", "unfold+bf16", "vmap+bf16", "loop+bf16"]
SPECS = [T.digits_small, T.mnist_paper, T.cifar10_paper, T.regression_1d]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _rel_err(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def _case(factory, k=3, b=4, seed=0, device="cpu"):
    spec = factory()
    g = torch.Generator().manual_seed(seed)
    params = {n: t.to(device) for n, t in spec.init_params(k, g).items()}
    x = torch.rand(b, *spec.input_shape, generator=g).to(device)
    return spec, params, x


def _bound(strategy):
    return PRECISION_BOUNDS[parse_strategy(strategy).precision]


@pytest.mark.parametrize("factory", SPECS)
@pytest.mark.parametrize("strategy", FP32 + BF16)
def test_forward_matches_loop(factory, strategy):
    spec, params, x = _case(factory)
    ref = spec.forward(params, x, strategy="loop")
    out = spec.forward(params, x, strategy=strategy)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert _rel_err(out, ref) <= _bound(strategy)


@pytest.mark.parametrize("strategy", FP32 + BF16)
def test_gradients_match_loop_for_weights_and_inputs(strategy):
    spec, params, x = _case(T.mnist_paper, k=3, b=2, seed=1)
    grads = {}
    for s in ("loop", strategy):
        p = {n: t.clone().requires_grad_(True) for n, t in params.items()}
        xi = x.clone().requires_grad_(True)
        out = spec.forward(p, xi, strategy=s)
        loss = torch.log_softmax(out, -1)[..., 0].sum()
        grads[s] = torch.autograd.grad(loss, [xi, *p.values()])
    precision = parse_strategy(strategy).precision
    for a, b in zip(grads[strategy], grads["loop"], strict=True):
        if precision == "bf16":  # documented as a relative L2 error (see GRAD_PRECISION_BOUNDS)
            assert float((a - b).norm() / b.norm()) <= GRAD_PRECISION_BOUNDS["bf16"]
        else:
            assert _rel_err(a, b) <= GRAD_PRECISION_BOUNDS[precision]


def test_reduced_precision_is_really_reduced():
    """The bf16 bound is not vacuous: bf16 differs from float32 by more than float32 round-off."""
    spec, params, x = _case(T.mnist_paper, k=4, b=8)
    ref = spec.forward(params, x, strategy="loop")
    for s in ("grouped+bf16", "loop+bf16"):
        assert 1e-5 < _rel_err(spec.forward(params, x, strategy=s), ref) <= PRECISION_BOUNDS["bf16"]


def test_dropout_strategies_keep_shapes_and_randomness():
    spec = T.mc_dropout_variant(T.mnist_paper(), p=0.5)
    params = spec.init_params(1)
    params = {n: t.expand(4, *t.shape[1:]) for n, t in params.items()}
    x = torch.rand(3, 1, 28, 28)
    for s in ("grouped", "unfold", "vmap"):
        out = spec.forward(params, x, strategy=s, dropout=True)
        assert out.shape == (4, 3, 10)
        assert not torch.allclose(out[0], out[1])  # different masks per member


def test_parse_strategy_and_errors():
    plan = parse_strategy("unfold+cl+bf16")
    assert (plan.kernel, plan.channels_last, plan.precision) == ("unfold", True, "bf16")
    assert plan.name == "unfold+cl+bf16"
    assert parse_strategy("grouped+graph").compile
    for bad, msg in [("conv", "kernel"), ("grouped+fast", "modifier"), ("grouped+tf32+bf16", "at most one"),
                     ("loop+compile", "reference"), ("", "expected")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            parse_strategy(bad)
    spec, params, x = _case(T.digits_small)
    with pytest.raises(ValueError, match="CUDA"):
        spec.forward(params, x, strategy="grouped+graph")
    with pytest.raises(ValueError, match="strategy"):
        TrainConfig(strategy="bogus")


def test_mode_is_read_from_autograd_state():
    spec, params, x = _case(T.digits_small)
    assert mode_of(params) == "attack"
    with torch.no_grad():
        assert mode_of(params) == "score"
    params["0.weight"].requires_grad_(True)
    assert mode_of(params) == "train"
    with pytest.raises(ValueError, match="mode"):  # the old boolean form is gone (0.x)
        choose_strategy("cpu", True)
    with pytest.raises(ValueError, match="mode"):
        choose_strategy("cpu", "predict")


def _count_calls(monkeypatch, name):
    calls = []
    orig = getattr(TargetSpec, name)

    def wrapped(self, *a, **kw):
        calls.append(name)
        return orig(self, *a, **kw)

    monkeypatch.setattr(TargetSpec, name, wrapped)
    return calls


def test_cpu_choice_depends_on_the_work_per_network_call(monkeypatch):
    monkeypatch.delenv("HGDEFEND_STRATEGY", raising=False)
    spec = T.digits_small()
    # conv 16×8×8 + conv 32×4×4 + linear 10 values per input
    assert spec.activations_per_input == 16 * 64 + 32 * 16 + 10
    small = T.CPU_LOOP_MIN_WORK - 1
    assert choose_strategy("cpu", "score", small) == "grouped"
    assert choose_strategy("cpu", "train", T.CPU_LOOP_MIN_WORK) == "loop"
    from hgdefend.targets.fused import available

    # scoring on CUDA: the fused Triton kernel, or grouped convolutions where Triton is missing
    want = "fused+tf32" if available() else "grouped+tf32"
    assert choose_strategy("cuda", "score", 10 * T.CPU_LOOP_MIN_WORK) == want
    assert choose_strategy("cuda", "attack", 10 * T.CPU_LOOP_MIN_WORK).startswith("grouped")
    loop_b = -(-T.CPU_LOOP_MIN_WORK // spec.activations_per_input)  # smallest batch that reaches it
    _, params, x = _case(T.digits_small, b=loop_b)
    grouped = _count_calls(monkeypatch, "_forward_grouped")
    single = _count_calls(monkeypatch, "_forward_single")
    with torch.no_grad():
        big = spec.forward(params, x)
        assert single == ["_forward_single"] * 3 and grouped == []
        small_out = spec.forward(params, x[:2])
        assert grouped == ["_forward_grouped"]
    ref = spec.forward(params, x, strategy="grouped")
    assert _rel_err(big, ref) <= 1e-5 and _rel_err(small_out, ref[:, :2]) <= 1e-5
    monkeypatch.setenv("HGDEFEND_STRATEGY", "unfold")  # an explicit choice still wins
    assert choose_strategy("cpu", "score", 10 * T.CPU_LOOP_MIN_WORK) == "unfold"


def test_env_override_per_mode(monkeypatch):
    spec, params, x = _case(T.digits_small)
    unfold = _count_calls(monkeypatch, "_forward_unfold")
    grouped = _count_calls(monkeypatch, "_forward_grouped")
    monkeypatch.setenv("HGDEFEND_STRATEGY", "score=unfold,attack=grouped")
    with torch.no_grad():
        spec.forward(params, x)
    assert unfold == ["_forward_unfold"] and grouped == []
    spec.forward(params, x)  # attack mode
    assert grouped == ["_forward_grouped"]
    monkeypatch.setenv("HGDEFEND_STRATEGY", "unfold")
    assert choose_strategy("cpu", "train") == "unfold"
    monkeypatch.setenv("HGDEFEND_STRATEGY", "nonsense")
    with pytest.raises(ValueError, match="kernel"):
        spec.forward(params, x)


def test_ensemble_strategy_attribute_and_argument_override(monkeypatch):
    spec, params, x = _case(T.digits_small)
    unfold = _count_calls(monkeypatch, "_forward_unfold")
    ens = SampledEnsemble(spec, params, strategy="unfold")
    ref = spec.forward(params, x, strategy="loop")
    assert _rel_err(ens.forward_logits(x), ref) <= 1e-5
    assert len(unfold) == 1
    assert ens.subset(2).strategy == "unfold"
    ens.forward_logits(x, strategy="grouped")
    assert len(unfold) == 1


@pytest.mark.parametrize("strategy", ["grouped", "unfold"])
def test_chunking_is_transparent(strategy):
    """K = 11 members × 7 inputs with a budget of 5 member-images per call: same logits and gradients."""
    spec, params, x = _case(T.digits_small, k=11, b=7, seed=3)
    whole = SampledEnsemble(spec, params, strategy=strategy)
    whole.member_images_per_chunk = 10**9
    chunked = SampledEnsemble(spec, params, strategy=strategy)
    chunked.member_images_per_chunk = 5
    assert list(chunked._chunks(7)).__len__() > 1
    assert _rel_err(chunked.forward_logits(x), whole.forward_logits(x)) <= 1e-6
    grads = []
    for ens in (whole, chunked):
        xi = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(ens.forward_logits(xi).logsumexp(-1).sum(), xi)[0])
    assert _rel_err(grads[1], grads[0]) <= 1e-5
    assert _rel_err(chunked.member_logits(x, batch_size=3), whole.forward_logits(x)) <= 1e-6


def test_automatic_chunk_follows_activation_size():
    mnist, digits = T.mnist_paper(), T.digits_small()
    per = T.activation_bytes(mnist)
    assert 150_000 < per < 250_000  # conv1 alone writes 32×24×24 floats twice (conv, activation)
    cpu = torch.device("cpu")
    assert auto_member_images_per_chunk(digits, cpu) > auto_member_images_per_chunk(mnist, cpu)
    ens = SampledEnsemble(mnist, mnist.init_params(2))
    assert ens.chunk_size() == auto_member_images_per_chunk(mnist, cpu)


def test_module_target_honours_precision_modifiers():
    nn = torch.nn
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    target = T.ModuleTarget(net, (1, 4, 4))
    params = target.init_params(3, torch.Generator().manual_seed(0))
    x = torch.rand(5, 1, 4, 4)
    ref = target.forward(params, x, strategy="loop")
    out = target.forward(params, x, strategy="grouped+bf16")
    assert out.dtype == torch.float32
    assert 0 < _rel_err(out, ref) <= PRECISION_BOUNDS["bf16"]


@pytest.mark.skipif(not os.environ.get("HGDEFEND_TEST_COMPILE"), reason="set HGDEFEND_TEST_COMPILE=1 "
                    "(torch.compile takes tens of seconds on a 2-core CPU)")  # fmt: skip
@pytest.mark.parametrize("strategy", ["grouped+compile", "unfold+compile"])
def test_compiled_strategies_match_loop(strategy):
    spec, params, x = _case(T.digits_small)
    out = spec.forward(params, x, strategy=strategy)
    assert _rel_err(out, spec.forward(params, x, strategy="loop")) <= 1e-5


@cuda
@pytest.mark.parametrize("strategy", FP32 + BF16 + ["grouped+graph", "unfold+compile"])
def test_cuda_strategies_match_cpu_loop(strategy):
    spec, params, x = _case(T.mnist_paper, k=5, b=16)
    ref = spec.forward(params, x, strategy="loop")
    p = {n: t.cuda() for n, t in params.items()}
    with torch.no_grad():
        out = spec.forward(p, x.cuda(), strategy=strategy).cpu()
        again = spec.forward(p, x.cuda(), strategy=strategy).cpu()  # graph replay
    # CPU and GPU float32 kernels sum in different orders: allow 1e-4 across devices.
    assert _rel_err(out, ref) <= max(_bound(strategy), 1e-4)
    assert _rel_err(again, out) <= 1e-6


@cuda
def test_cuda_chunking_and_auto_choice():
    spec, params, x = _case(T.mnist_paper, k=20, b=30)
    ens = SampledEnsemble(spec, {n: t.cuda() for n, t in params.items()})
    ref = ens.forward_logits(x.cuda())
    ens.member_images_per_chunk = 64
    # the automatic choice scores with TF32: cuBLAS picks other algorithms for other chunk shapes, so
    # chunked and whole calls differ by TF32 round-off (9e-5 measured on an H100), not by a bug's O(1)
    assert _rel_err(ens.forward_logits(x.cuda()), ref) <= 1e-3
    assert ens.subset(3).chunk_size() == 64


def test_default_threads_drop_to_one_on_a_busy_machine(monkeypatch):
    from hgdefend.cli import common

    monkeypatch.setattr(common.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(common.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert common.default_threads() == 4
    monkeypatch.setattr(common.os, "getloadavg", lambda: (6.0, 6.0, 6.0))
    assert common.default_threads() == 1


def test_pool_is_moved_before_the_activation_only_where_they_commute():
    """The batched kernels pool before a non-decreasing activation (exact, and a quarter of the
    work); a leaky ReLU with a negative slope does not commute with max, so it keeps its place."""
    for slope in (0.01, -0.5):
        layers = (
            T.Conv(1, 4, 3, padding=1),
            T.Act("leaky_relu", slope),
            T.MaxPool(2),
            T.Flatten(),
            T.Linear(64, 3),
        )
        spec = T.TargetSpec("t", (1, 8, 8), layers)
        params = spec.init_params(3, torch.Generator().manual_seed(0))
        x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ref = spec.forward(params, x, strategy="loop")
            for strategy in ("grouped", "unfold", "vmap"):
                assert _rel_err(spec.forward(params, x, strategy=strategy), ref) <= 1e-6, (slope, strategy)
