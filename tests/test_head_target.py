"""HeadTarget: a HyperGAN over the head of a user's pretrained model (issue #16, items 1-2)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hgdefend import HgdefendError, HyperGAN, SampledEnsemble, TrainConfig, Trainer, load_model, save_model
from hgdefend.attacks.fgsm import FGSM
from hgdefend.schema import SchemaError, check_target
from hgdefend.targets import HeadTarget, backbone_sha256

TINY = {"noise_dim": 8, "code_dim": 4, "hidden": 16}


def digits_cnn(seed: int = 0) -> nn.Sequential:
    """The user's model: conv → relu → flatten → linear on 1×8×8 digits."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))


class BNNet(nn.Module):
    """A frozen part with BatchNorm (running stats made non-trivial), then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 36, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def reference(model: nn.Module, target: HeadTarget, params: dict, x: torch.Tensor) -> torch.Tensor:
    """Each member as the user's whole model with its head weights W + Δ swapped in, one at a time."""
    model = model.eval()
    state = dict(model.named_parameters())
    outs = []
    for i in range(next(iter(params.values())).shape[0]):
        member = {n: state[n] + d[i] for n, d in params.items()}
        outs.append(torch.func.functional_call(model, member, (x,)))
    return torch.stack(outs)


def offsets(target: HeadTarget, k: int, scale: float = 0.3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f"{grp.name}.{p}": torch.randn((k, *s), generator=g) * scale
            for grp in target.param_groups for p, s in grp.shapes.items()}  # fmt: skip


def state_copy(m: nn.Module) -> dict:
    return {n: t.clone() for n, t in m.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_only_the_named_head_is_generated():
    t = HeadTarget(digits_cnn(), ["3"], (1, 8, 8))
    assert [(g.name, g.shapes) for g in t.param_groups] == [("3", {"weight": (10, 256), "bias": (10,)})]
    assert t.num_outputs == 10 and t.task == "classification"
    cfg = t.config()
    assert cfg["kind"] == "head" and cfg["generate"] == ["3"]
    assert cfg["backbone_sha256"] == backbone_sha256(digits_cnn()) and len(cfg["backbone_sha256"]) == 64


def test_k_heads_in_one_batched_call_equal_a_loop_over_the_whole_model():
    model = digits_cnn()
    t = HeadTarget(model, ["3"], (1, 8, 8))
    x = torch.rand(6, 1, 8, 8)
    p = offsets(t, 4)
    batched = t.forward(p, x, strategy="vmap")
    looped = t.forward(p, x, strategy="loop")
    assert batched.shape == (4, 6, 10)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched, reference(model, t, p, x), atol=1e-5, rtol=0)


def test_the_frozen_part_runs_once_per_input():
    t = HeadTarget(digits_cnn(), ["3"], (1, 8, 8))
    calls = []
    t.module[0].register_forward_hook(lambda *_: calls.append(1))
    t.forward(offsets(t, 5), torch.rand(3, 1, 8, 8))
    assert len(calls) == 1


def test_zero_offsets_give_the_users_model():
    model = digits_cnn()
    t = HeadTarget(model, ["3"], (1, 8, 8))
    x = torch.rand(16, 1, 8, 8)
    ens = SampledEnsemble(t, t.zero_offsets(3))
    with torch.no_grad():
        want = model.eval()(x)
        got = ens.forward_logits(x)
    torch.testing.assert_close(got, want.expand(3, -1, -1), atol=1e-6, rtol=0)
    assert torch.equal(ens.predict_proba(x).argmax(-1), want.argmax(-1))


def test_a_fresh_hypergan_emits_small_offsets():
    """At the digits recipe's size, a fresh HyperGAN's Δ is a fraction of the pretrained weights."""
    t = HeadTarget(digits_cnn(), ["3"], (1, 8, 8))
    torch.manual_seed(0)
    p = HyperGAN(t, noise_dim=64, code_dim=32, hidden=128).sample_frozen(4, seed=0)
    pre = dict(t.module.named_parameters())
    for n, d in p.items():
        assert float(d.flatten(1).norm(dim=1).max()) < 0.3 * float(pre[n].norm()), n


def test_training_leaves_the_frozen_part_bitwise_unchanged(digits):
    model = digits_cnn()
    before = state_copy(model)
    t = HeadTarget(model, ["3"], (1, 8, 8))
    torch.manual_seed(0)
    hg = HyperGAN(t, **TINY)
    first = hg.sample_frozen(2, seed=0)
    cfg = TrainConfig(steps=5, nets_per_step=4, batch_size=16, pretrain_max_steps=2)
    Trainer(hg, digits.train, cfg, device="cpu", progress=False).fit()
    assert same_state(state_copy(t.module), before)  # the target's copy: pretrained head included
    assert same_state(state_copy(model), before)  # the user's own model
    assert all(not p.requires_grad for p in t.module.parameters())
    after = hg.sample_frozen(2, seed=0)
    assert any(not torch.equal(first[n], after[n]) for n in first)  # the offsets did train


def test_batchnorm_in_the_frozen_part_stays_in_eval_mode():
    model = BNNet().train()  # handed over in train mode: the target must still use running stats
    before = state_copy(model)
    t = HeadTarget(model, ["fc"], (1, 8, 8))
    x = torch.rand(8, 1, 8, 8)
    p = {n: d.requires_grad_(True) for n, d in offsets(t, 3, 0.1).items()}
    out = t.forward(p, x)
    out.sum().backward()  # a training step's forward and backward
    assert not t.module.training and not t.module.bn.training
    assert same_state(state_copy(t.module), before)  # running_mean / var / num_batches_tracked
    assert model.training  # the user's own model is not switched by us
    with torch.no_grad():  # the reference runs the user's model in eval mode: running statistics
        torch.testing.assert_close(out.detach(), reference(model, t, p, x), atol=1e-5, rtol=0)


def test_input_gradients_flow_through_the_frozen_part():
    model = digits_cnn()
    t = HeadTarget(model, ["3"], (1, 8, 8))
    ens = SampledEnsemble(t, offsets(t, 3, 0.05))
    x = torch.rand(32, 1, 8, 8).requires_grad_(True)
    ens.forward_logits(x).logsumexp(-1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in t.module.parameters())
    x0 = x.detach()
    y = ens.predict_proba(x0).argmax(-1)
    x_adv = FGSM(ens, eps=0.3)(x0, y)
    changed = (ens.predict_proba(x_adv).argmax(-1) != y).float().mean()
    assert changed > 0  # the attack moves predictions: the gradient reaches the inputs


def test_several_names_at_the_end_of_a_sequential():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 5))
    t = HeadTarget(model, ["1", "3"], (1, 8, 8))
    assert [g.name for g in t.param_groups] == ["1", "3"]
    x = torch.rand(4, 1, 8, 8)
    p = offsets(t, 3, 0.1)
    torch.testing.assert_close(t.forward(p, x), reference(model, t, p, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("generate", "message"),
    [
        (["1"], "has no parameters"),  # a ReLU
        (["0"], "is not the end of the model"),
        (["fc"], "has no submodule 'fc'"),
        ([], "expected a list of submodule names"),
        (["3", "3"], "twice"),
    ],
)
def test_a_head_that_is_not_the_end_is_refused(generate, message):
    with pytest.raises(HgdefendError, match="generate") as err:
        HeadTarget(digits_cnn(), generate, (1, 8, 8))
    assert message in str(err.value)


def test_post_processing_after_the_head_is_refused():
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.fc = nn.Flatten(), nn.Linear(64, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.body(x)) * 2.0

    with pytest.raises(HgdefendError, match="the last ones the forward applies"):
        HeadTarget(Scaled(), ["fc"], (1, 8, 8))


def test_a_saved_model_loads_only_with_the_same_backbone(tmp_path):
    model = digits_cnn()
    torch.manual_seed(0)
    hg = HyperGAN(HeadTarget(model, ["3"], (1, 8, 8)), **TINY)
    path = tmp_path / "head.safetensors"
    save_model(path, hg)
    loaded = load_model(path, module=digits_cnn()).hypergan  # same weights, another instance
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.ensemble(3).forward_logits(x), hg.ensemble(3).forward_logits(x))
    with pytest.raises(HgdefendError, match=r"^module: is not the pretrained model"):
        load_model(path, module=digits_cnn(seed=1))  # same architecture, other weights
    with pytest.raises(HgdefendError, match=r"^module: this model file protects a pretrained model"):
        load_model(path)


def test_the_model_file_header_of_a_head_target_is_schema_checked():
    cfg = HeadTarget(digits_cnn(), ["3"], (1, 8, 8)).config()
    assert check_target(dict(cfg)) == cfg
    for key, bad, message in (("backbone_sha256", "abc", "64 lowercase hex"), ("generate", [], "list of 1"),
                              ("generate", [3], "expected a string")):  # fmt: skip
        with pytest.raises(SchemaError, match=f"target.{key}.*{message}"):
            check_target({**cfg, key: bad})
    with pytest.raises(SchemaError, match="missing key"):
        check_target({k: v for k, v in cfg.items() if k != "backbone_sha256"})


def test_resnet18_fc_head_matches_the_loop():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)  # random init: nothing is downloaded
    t = HeadTarget(model, ["fc"], (3, 32, 32))
    assert [(g.name, g.shapes) for g in t.param_groups] == [("fc", {"weight": (10, 512), "bias": (10,)})]
    x = torch.rand(2, 3, 32, 32)
    p = offsets(t, 3, 0.05)
    with torch.no_grad():
        batched = t.forward(p, x, strategy="vmap")
        torch.testing.assert_close(batched, t.forward(p, x, strategy="loop"), atol=1e-5, rtol=0)
        torch.testing.assert_close(batched, reference(model, t, p, x), atol=1e-5, rtol=0)


def test_the_example_runs():
    script = Path(__file__).resolve().parents[1] / "examples" / "protect_your_model.py"
    res = subprocess.run([sys.executable, str(script), "--steps", "20"], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(line.startswith("your model") for line in lines), res.stdout
    assert any(line.startswith("head HyperGAN") for line in lines), res.stdout
    assert any("refused" in line for line in lines), res.stdout


def test_the_art_estimator_works_on_a_head_model(digits):
    """ART's estimator wraps a head HyperGAN unchanged; an ART attack runs through the frozen part."""
    import numpy as np
    from art.attacks.evasion import FastGradientMethod

    from hgdefend.art import HyperGANClassifier

    model = digits_cnn()
    hg = HyperGAN(HeadTarget(model, ["3"], (1, 8, 8)), **TINY)
    clf = HyperGANClassifier(hg, members=4, clip_values=(0.0, 1.0), device_type="cpu")
    x = digits.test.x[:16].numpy()
    probs = clf.predict(x)
    assert probs.shape == (16, 10) and np.all(np.isfinite(probs))
    x_adv = FastGradientMethod(clf, eps=0.2).generate(x)
    assert np.abs(x_adv - x).max() <= 0.2 + 1e-6 and not np.allclose(x_adv, x)


# ------------------------------------------------------------------ compact parametrisations of a block
def block_cnn(seed: int = 0) -> nn.Sequential:
    """conv → BN → relu → [conv → BN → relu → flatten → linear]: the last block and head generated."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 64, 10))  # fmt: skip
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return model.eval()


class TinyResNet(nn.Module):
    """torchvision's ResNet layout (layer4 → avgpool → flatten → fc in forward, not a Sequential)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.layer4 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(torch.relu(self.stem(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


BLOCK = ["3", "4", "7"]  # block_cnn's last conv, its BatchNorm and the linear head
COMPACT = ["scales", "lowrank:2"]


def materialised(model: nn.Module, params: dict, i: int) -> dict:
    """Member i's weights of the whole model, written out from the generated tensors' meaning:
    ``P_scale`` → W·(1+γ) per output row, ``P_u``/``P_v`` → W + U V, anything else → W + Δ."""
    state = dict(model.named_parameters())
    member: dict = {}
    for key, t in params.items():
        for suffix in ("_scale", "_u", "_v"):
            if key.endswith(suffix) and key[: -len(suffix)] in state:
                name = key[: -len(suffix)]
                w = state[name]
                if suffix == "_scale":
                    member[name] = w * (1 + t[i]).view(-1, *([1] * (w.dim() - 1)))
                elif suffix == "_u":
                    member[name] = w + (t[i] @ params[name + "_v"][i]).view(w.shape)
                break
        else:
            member[key] = state[key] + t[i]
    return member


def compact_reference(model: nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    """Each member as the user's whole model with materialised weights, one at a time."""
    model = model.eval()
    k = next(iter(params.values())).shape[0]
    return torch.stack([torch.func.functional_call(model, materialised(model, params, i), (x,))
                        for i in range(k)])  # fmt: skip


def generated_numbers(target: HeadTarget) -> int:
    return sum(math.prod(s) for g in target.param_groups for s in g.shapes.values())


@pytest.mark.parametrize("compact", COMPACT)
def test_each_compact_mode_starts_exactly_at_the_users_model(compact):
    model = block_cnn()
    t = HeadTarget(model, BLOCK, (1, 8, 8), compact=compact)
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        want = model(x)
        got = SampledEnsemble(t, t.zero_offsets(3)).forward_logits(x)
    torch.testing.assert_close(got, want.expand(3, -1, -1), atol=1e-6, rtol=0)
    for tgt in (t, HeadTarget(TinyResNet(), ["layer4", "fc"], (1, 8, 8), compact=compact)):
        assert any(not k.endswith(("bias", ".weight")) for k in tgt.config()["param_shapes"])


@pytest.mark.parametrize("compact", COMPACT)
def test_compact_members_in_one_batched_call_equal_a_loop_and_the_materialised_model(compact):
    model = block_cnn()
    t = HeadTarget(model, BLOCK, (1, 8, 8), compact=compact)
    x = torch.rand(6, 1, 8, 8)
    p = offsets(t, 4, 0.2)
    with torch.no_grad():
        batched = t.forward(p, x, strategy="vmap")
        assert batched.shape == (4, 6, 10)
        torch.testing.assert_close(batched, t.forward(p, x, strategy="loop"), atol=1e-5, rtol=0)
        torch.testing.assert_close(batched, compact_reference(model, p, x), atol=1e-5, rtol=0)
        assert (batched - model(x)).abs().max() > 1e-2  # the generated tensors do change the members
        init = t.init_params(3, torch.Generator().manual_seed(0))
        torch.testing.assert_close(t.forward(init, x), compact_reference(model, init, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("compact", ["full", *COMPACT])
def test_a_block_and_head_that_are_not_one_sequential_are_traced(compact):
    """ResNet's layout: ``layer4`` and ``fc`` are children of the model, joined by its forward."""
    model = TinyResNet().eval()
    t = HeadTarget(model, ["layer4", "fc"], (1, 8, 8), compact=compact)
    x = torch.rand(5, 1, 8, 8)
    p = offsets(t, 3, 0.2)
    calls = []
    t.module.stem.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        got = t.forward(p, x)
        torch.testing.assert_close(got, compact_reference(model, p, x), atol=1e-5, rtol=0)
        torch.testing.assert_close(got, t.forward(p, x, strategy="loop"), atol=1e-5, rtol=0)
    assert len(calls) == 2  # the frozen stem ran once per forward, whatever K


def test_a_skip_connection_around_the_generated_part_is_refused():
    class Skip(TinyResNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = self.stem(x)  # used after layer4, though layer4's input is relu(s)
            return self.fc(torch.flatten(self.avgpool(self.layer4(torch.relu(s)) + s.repeat(1, 2, 1, 1)), 1))

    with pytest.raises(HgdefendError, match="generate: .*computed before it"):
        HeadTarget(Skip(), ["layer4", "fc"], (1, 8, 8), compact="scales")


def test_a_weight_read_without_calling_its_layer_is_materialised():
    """A parent that reads ``lin.weight`` itself (as nn.MultiheadAttention does with out_proj) never
    calls the layer: its member weights are written out instead of computed by a wrapper."""

    class Direct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(3)
            self.body, self.lin = nn.Flatten(), nn.Linear(64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(self.body(x), self.lin.weight, self.lin.bias)

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = Direct()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x)

    model = Outer()
    for compact in COMPACT:
        t = HeadTarget(model, ["head"], (1, 8, 8), compact=compact)
        x = torch.rand(3, 1, 8, 8)
        p = offsets(t, 2, 0.3)
        with torch.no_grad():
            torch.testing.assert_close(t.forward(p, x), compact_reference(model, p, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("compact", COMPACT)
def test_training_a_compact_block_leaves_the_frozen_part_bitwise_unchanged(digits, compact):
    model = block_cnn()
    before = state_copy(model)
    t = HeadTarget(model, BLOCK, (1, 8, 8), compact=compact)
    assert same_state(state_copy(t.module), before)  # the wrappers add no state
    torch.manual_seed(0)
    hg = HyperGAN(t, **TINY)
    first = hg.sample_frozen(2, seed=0)
    cfg = TrainConfig(steps=4, nets_per_step=4, batch_size=16, pretrain_max_steps=2)
    Trainer(hg, digits.train, cfg, device="cpu", progress=False).fit()
    assert same_state(state_copy(t.module), before)  # BN running statistics and the block's weights
    assert same_state(state_copy(model), before)
    assert not t.module.training and all(not p.requires_grad for p in t.module.parameters())
    after = hg.sample_frozen(2, seed=0)
    assert any(not torch.equal(first[n], after[n]) for n in first)


@pytest.mark.parametrize("compact", COMPACT)
def test_a_compact_config_round_trips_through_the_model_file(tmp_path, compact):
    t = HeadTarget(block_cnn(), BLOCK, (1, 8, 8), compact={"3": compact})
    cfg = t.config()
    assert cfg["compact"] == {"3": compact, "4": "full", "7": "full"}
    assert check_target(dict(cfg)) == cfg
    with pytest.raises(SchemaError, match=r"target.compact\['3'\]: expected full, scales or lowrank:R"):
        check_target({**cfg, "compact": {**cfg["compact"], "3": "lowrank:0"}})
    with pytest.raises(SchemaError, match="target.compact: expected one mode per generated name"):
        check_target({**cfg, "compact": {"3": compact}})
    assert "compact" not in HeadTarget(block_cnn(), BLOCK, (1, 8, 8)).config()  # full: files as before
    torch.manual_seed(0)
    hg = HyperGAN(t, **TINY)
    path = tmp_path / "compact.safetensors"
    save_model(path, hg)
    loaded = load_model(path, module=block_cnn()).hypergan
    assert loaded.target.compact == t.compact and loaded.target.config() == cfg
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.ensemble(3).forward_logits(x), hg.ensemble(3).forward_logits(x))


@pytest.mark.parametrize(
    ("compact", "message"),
    [
        ("lowrank", r"^compact: expected 'full', 'scales' or 'lowrank:R'"),
        ("lowrank:0", r"^compact: expected .* got 'lowrank:0'"),
        ("scale", r"^compact: expected .* got 'scale'"),
        (3, r"^compact: expected a mode"),
        ({"fc": "scales"}, r"^compact: names \['fc'\] that generate does not"),
        ({"3": "lowrank:x"}, r"^compact\['3'\]: expected"),
    ],
)
def test_a_wrong_compact_value_is_a_clear_error(compact, message):
    with pytest.raises(HgdefendError, match=message):
        HeadTarget(block_cnn(), BLOCK, (1, 8, 8), compact=compact)


def test_scales_generate_a_number_per_channel_not_per_parameter():
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))  # fmt: skip
    names = ["1", "2", "5"]
    full = HeadTarget(wide, names, (1, 8, 8))
    scales = HeadTarget(wide, names, (1, 8, 8), compact="scales")
    low = HeadTarget(wide, names, (1, 8, 8), compact="lowrank:2")
    # conv: 64 scales + 64 bias offsets; BN: 2 × 64 offsets; linear: 10 scales + 10 bias offsets
    assert generated_numbers(scales) == 64 + 64 + 2 * 64 + 10 + 10
    assert generated_numbers(full) == 64 * 64 * 9 + 64 + 2 * 64 + 10 * 64 + 10
    assert generated_numbers(low) == 2 * (64 + 64 * 9) + 64 + 2 * 64 + 2 * (10 + 64) + 10

    def generators(t: HeadTarget) -> int:
        return sum(p.numel() for p in HyperGAN(t, **TINY).generator_parameters())

    assert generators(scales) * 50 < generators(full)


@pytest.mark.parametrize("compact", COMPACT)
def test_input_gradients_flow_through_a_compact_block(compact):
    model = block_cnn()
    t = HeadTarget(model, BLOCK, (1, 8, 8), compact=compact)
    ens = SampledEnsemble(t, offsets(t, 3, 0.1))
    x = torch.rand(8, 1, 8, 8).requires_grad_(True)
    ens.forward_logits(x).logsumexp(-1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in t.module.parameters())


@pytest.mark.parametrize("compact", ["full", *COMPACT])
def test_onnx_export_of_a_generated_block_holds_parity(tmp_path, compact):
    """The graph computes the members' block (BatchNorm included) from the frozen weights and the
    generated tensors; the exporter's parity check (onnxruntime vs torch, batches 1 and 7) must pass."""
    pytest.importorskip("onnxruntime")
    from hgdefend.export import export_onnx, run_onnx

    model = TinyResNet().eval()
    t = HeadTarget(model, ["layer4", "fc"], (1, 8, 8), compact=compact)
    ens = SampledEnsemble(t, offsets(t, 3, 0.2), value_range=(0.0, 1.0))
    res = export_onnx(ens, None, tmp_path / "c.onnx", parity_inputs=torch.rand(4, 1, 8, 8))
    assert res.members == 3 and res.max_abs_prob_diff < 1e-4
    x = torch.rand(6, 1, 8, 8)
    got = run_onnx(tmp_path / "c.onnx", x.numpy())
    with torch.no_grad():
        want = compact_reference(model, ens.params, x).softmax(-1).mean(0)
    torch.testing.assert_close(torch.as_tensor(got["probabilities"]), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("compact", COMPACT)
def test_resnet18_layer4_and_fc_compact_match_the_materialised_model(compact):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    t = HeadTarget(model, ["layer4", "fc"], (3, 32, 32), compact={"layer4": compact})
    assert generated_numbers(t) < 100_000 < sum(p.numel() for p in model.layer4.parameters())
    x = torch.rand(2, 3, 32, 32)
    p = offsets(t, 2, 0.05)
    with torch.no_grad():
        torch.testing.assert_close(t.forward(p, x), compact_reference(model, p, x), atol=1e-4, rtol=0)
