import pytest
import torch
from torch import nn

from hgdefend import targets as T
from hgdefend.targets import ModuleTarget, TargetSpec, check_params


def _rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("factory", [T.digits_small, T.mnist_paper, T.cifar10_paper, T.regression_1d])
@pytest.mark.parametrize("strategy", ["grouped", "vmap"])
def test_batched_forward_matches_per_network_loop(factory, strategy):
    spec = factory()
    k, b = 4, 3
    g = torch.Generator().manual_seed(0)
    params = spec.init_params(k, g)
    x = torch.rand(b, *spec.input_shape, generator=g)
    ref = spec.forward(params, x, strategy="loop")
    out = spec.forward(params, x, strategy=strategy)
    assert out.shape == (k, b, spec.num_outputs)
    assert _rel_err(out, ref) <= 1e-5


def test_gradients_match_loop():
    spec = T.digits_small()
    params = {
        n: t.requires_grad_(True) for n, t in spec.init_params(3, torch.Generator().manual_seed(1)).items()
    }
    x = torch.rand(5, 1, 8, 8)
    grads = []
    for strategy in ("loop", "grouped"):
        out = spec.forward(params, x, strategy=strategy)
        grads.append(torch.autograd.grad(out.square().sum(), list(params.values())))
    for a, b in zip(*grads, strict=True):
        assert _rel_err(a, b) <= 1e-5


def test_cifar_linear_size_is_derived_from_conv_stack():
    spec = T.cifar10_paper()
    lin = [layer for layer in spec.layers if isinstance(layer, T.Linear)][0]
    assert lin.in_features == 32 * 4 * 4
    assert spec.num_outputs == 10


def test_spec_json_round_trip():
    spec = T.mnist_paper()
    assert TargetSpec.from_config(spec.config()) == spec


def test_inconsistent_spec_is_rejected_with_layer_named():
    with pytest.raises(ValueError, match=r"layers\[3\]"):
        TargetSpec("bad", (1, 8, 8), (T.Conv(1, 4, 3), T.Act(), T.Flatten(), T.Linear(99, 2)))


def test_check_params_names_the_problem():
    spec = T.digits_small()
    params = spec.init_params(2)
    params["0.weight"] = params["0.weight"][:, :, :, :2]
    with pytest.raises(ValueError, match=r"params\['0.weight'\]"):
        check_params(spec, params)
    with pytest.raises(ValueError, match="ensemble size"):
        spec.init_params(0)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_module_target_vmap_matches_loop_and_groups_by_layer():
    target = ModuleTarget(SmallNet(), (1, 8, 8))
    assert [g.name for g in target.param_groups] == ["conv", "bn", "fc"]
    params = target.init_params(3, torch.Generator().manual_seed(0))
    x = torch.rand(4, 1, 8, 8)
    out = target.forward(params, x)
    ref = target.forward(params, x, strategy="loop")
    assert out.shape == (3, 4, 10)
    assert _rel_err(out, ref) <= 1e-5


def test_module_target_rejects_non_module():
    with pytest.raises(ValueError, match="module"):
        ModuleTarget(object(), (1, 8, 8))
