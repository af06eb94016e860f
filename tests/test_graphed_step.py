"""The training step captured as a CUDA graph trains exactly as the eager step (on a GPU), and is
refused with one clear error where a graph could not replay it faithfully."""

import pytest
import torch

from hgdefend import HyperGAN, TrainConfig, Trainer
from hgdefend.data import Split
from hgdefend.targets import digits_small, mnist_paper
from hgdefend.validation import HgdefendError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _split(shape, n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Split(torch.rand(n, *shape, generator=g), torch.randint(10, (n,), generator=g))


def _hypergan(spec, regulariser="gan", seed=0):
    torch.manual_seed(seed)
    return HyperGAN(spec, noise_dim=32, code_dim=16, hidden=64, regulariser=regulariser)


def test_cuda_graph_is_refused_without_a_gpu_or_for_steps_that_draw_inside():
    data = _split((1, 8, 8))
    if not torch.cuda.is_available():
        with pytest.raises(HgdefendError, match="cuda_graph: .*CUDA device"):
            Trainer(
                _hypergan(digits_small()), data, TrainConfig(cuda_graph=True), device="cpu", progress=False
            )
        return
    with pytest.raises(HgdefendError, match="cuda_graph: .*plain recipe"):
        Trainer(_hypergan(digits_small()), data, TrainConfig(cuda_graph=True, adversarial="fgsm"),
                device="cuda", progress=False)  # fmt: skip


def _train(spec, data, regulariser, graphed, steps=12):
    hg = _hypergan(spec, regulariser)
    start = {n: t.clone() for n, t in hg.state_dict().items()}
    cfg = TrainConfig(steps=steps, nets_per_step=8, batch_size=32, pretrain_max_steps=5, strategy="grouped",
                      cuda_graph=graphed)  # fmt: skip
    result = Trainer(hg, data, cfg, device="cuda", progress=False).fit()
    assert result.steps == steps
    return {n: t.cpu() for n, t in start.items()}, {n: t.cpu() for n, t in hg.state_dict().items()}


@cuda
@pytest.mark.parametrize("regulariser", ["gan", "mmd", "none"])
def test_graphed_training_follows_eager_training(regulariser):
    """Same seed, 12 steps (capture at the first): the graphed run follows the eager one.

    Not bit for bit: cuDNN's backward kernels are not deterministic, and Adam's first steps are
    close to ``lr · sign(gradient)``, so round-off in a near-zero gradient moves a weight by up to
    ``lr``. So each weight tensor must end within 2 % of the distance training moved it; a graph
    replaying stale inputs, a lost gradient or a skipped update would be off by about that distance."""
    spec = mnist_paper()
    data = _split(spec.input_shape)
    start, eager = _train(spec, data, regulariser, graphed=False)
    _, graphed = _train(spec, data, regulariser, graphed=True)
    for name, w in eager.items():
        moved = float((w - start[name]).norm())
        off = float((graphed[name] - w).norm())
        assert off <= 0.02 * moved + 1e-6, f"{name}: {off:.3g} off after moving {moved:.3g}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_train_cuda_graph_without_a_gpu_is_one_line_and_exit_2(tmp_path):
    from click.testing import CliRunner

    from hgdefend.cli.main import cli

    res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "m"), "--cuda-graph", "--device", "cpu"])
    assert res.exit_code == 2
    assert "cuda_graph" in res.output and "CUDA device" in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output


@pytest.mark.parametrize("regulariser", ["gan", "mmd", "none"])
def test_the_graph_inputs_hold_the_eager_steps_draws(regulariser, monkeypatch):
    """Runs on a CPU: the buffers a replay reads get the eager step's noise, minibatch and prior sample,
    drawn in its order from the same generator (the capture itself needs CUDA)."""
    from hgdefend import graphed_step, rng

    monkeypatch.setattr(graphed_step, "check_graphable", lambda trainer: None)
    spec = mnist_paper()
    hg = _hypergan(spec, regulariser)
    trainer = Trainer(hg, _split(spec.input_shape, n=64), TrainConfig(nets_per_step=8, batch_size=32),
                      device="cpu", progress=False)  # fmt: skip
    step = graphed_step.GraphedStep(trainer, None)
    step._draw(torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    noise = hg.sample_noise(8, g)
    idx = rng.randint(64, 32, g, "cpu")
    assert torch.equal(step.noise, noise) and torch.equal(step.idx, idx)
    prior = step.prior_reg if regulariser == "mmd" else step.prior_d
    if regulariser == "none":
        assert prior is None
    else:
        assert torch.equal(prior, hg.prior_like(hg.codes(noise), g))
