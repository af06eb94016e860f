import pytest
import torch

from hgdefend import HyperGAN, ModuleTarget
from hgdefend.hypergan import make_generator, mmd_rbf
from hgdefend.targets import digits_small
from tests.test_targets import SmallNet


def _hg(**kw):
    torch.manual_seed(0)
    return HyperGAN(digits_small(), noise_dim=16, code_dim=8, hidden=32, **kw)


def test_same_seed_same_weights_different_seed_different():
    hg = _hg()
    a, b, c = hg.sample(4, seed=3), hg.sample(4, seed=3), hg.sample(4, seed=4)
    for name in a:
        assert torch.equal(a[name], b[name])
        assert a[name].shape[0] == 4
    assert not torch.equal(a["0.weight"], c["0.weight"])


def test_members_within_a_sample_differ():
    w = _hg().sample(3, seed=0)["0.weight"]
    assert not torch.allclose(w[0], w[1])


def test_ensemble_is_frozen_and_seeded():
    hg = _hg()
    ens = hg.ensemble(5, seed=7)
    assert ens.k == 5 and ens.seed == 7
    assert all(not t.requires_grad for t in ens.params.values())
    assert torch.equal(ens.params["3.weight"], hg.ensemble(5, seed=7).params["3.weight"])


@pytest.mark.parametrize("training", [True, False])
def test_sample_frozen_equals_sample_without_autograd_and_restores_mode(training):
    hg = _hg()
    hg.train(training)
    g_frozen, g_ref = make_generator(5), make_generator(5)
    frozen = hg.sample_frozen(3, g_frozen)
    assert hg.training is training
    with torch.no_grad():
        ref = hg.sample(3, g_ref)
    assert frozen.keys() == ref.keys()
    for name, t in frozen.items():
        assert torch.equal(t, ref[name])  # bitwise: the same noise, the same ops
        assert not t.requires_grad and t.grad_fn is None  # grad mode is on here: sample() would track
    # the same RNG consumption as sample(): both generators are at the same state afterwards
    assert torch.equal(torch.randn(4, generator=g_frozen), torch.randn(4, generator=g_ref))
    ens = hg.ensemble(3, seed=5)
    for name, t in hg.sample_frozen(3, seed=5).items():
        assert torch.equal(ens.params[name], t)
    with pytest.raises(ValueError, match="ensemble size"):
        hg.sample_frozen(0)
    assert hg.training is training  # restored when sampling fails, too


def test_mixer_pretraining_moves_codes_toward_prior():
    hg = _hg()
    g = torch.Generator().manual_seed(0)
    _, first = hg.pretrain_mixer(max_steps=1, generator=g)
    steps, last = hg.pretrain_mixer(max_steps=200, generator=g)
    assert last < first
    assert last < 0.1 or steps == 200


@pytest.mark.parametrize("reg", ["gan", "mmd", "none"])
def test_regularisers_give_finite_differentiable_losses(reg):
    hg = _hg(regulariser=reg, beta=2.0)
    codes = hg.codes(hg.sample_noise(6))
    loss = hg.regulariser_loss(codes)
    assert torch.isfinite(loss)
    if reg != "none":
        loss.backward()
        assert any(p.grad is not None for p in hg.mixer.parameters())
    if reg == "gan":
        assert torch.isfinite(hg.discriminator_loss(codes))


def test_mmd_detects_shift():
    a = torch.randn(200, 8)
    assert mmd_rbf(a, torch.randn(200, 8)) < mmd_rbf(a, torch.randn(200, 8) + 2)


def test_bad_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="regulariser"):
        HyperGAN(digits_small(), regulariser="wgan")
    with pytest.raises(ValueError, match="beta"):
        HyperGAN(digits_small(), beta=-1)
    with pytest.raises(ValueError, match="ensemble size"):
        _hg().sample(0)


def test_hypergan_generates_user_module_weights():
    hg = HyperGAN(ModuleTarget(SmallNet(), (1, 8, 8)), noise_dim=8, code_dim=4, hidden=16)
    ens = hg.ensemble(3, seed=0)
    assert ens.member_logits(torch.rand(2, 1, 8, 8)).shape == (3, 2, 10)
