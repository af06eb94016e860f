import itertools
import math

import pytest
import torch

from hgdefend import HyperGAN, TrainConfig, Trainer, load_data, training
from hgdefend.targets import digits_small, regression_1d
from hgdefend.training import deep_ensemble, mc_dropout, quick_eval, single_network, train_members
from hgdefend.validation import HgdefendError


def test_default_digits_recipe_reaches_95_percent(trained_digits, digits):
    ens = trained_digits.ensemble(100, seed=1)
    res = quick_eval(ens, digits.test, "classification")
    assert res["ensemble_acc"] >= 0.95
    assert res["member_acc_min"] >= 0.85


def _small(seed=0, **kw):
    torch.manual_seed(seed)
    return HyperGAN(digits_small(), noise_dim=16, code_dim=8, hidden=32, **kw)


def _interrupted_fit(trainer, at_step):
    """Fit until step ``at_step`` starts, then stop as Ctrl-C would (checkpoints written so far stay)."""
    orig = trainer._step

    def interrupting(step, g):
        if step == at_step:
            raise KeyboardInterrupt
        return orig(step, g)

    trainer._step = interrupting
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()


def test_resume_from_interrupted_run_matches(tmp_path, digits):
    """Interrupt after 5 of 10 steps (time budget), resume, compare with an uninterrupted run."""
    cfg = dict(steps=10, nets_per_step=4, batch_size=32, pretrain_max_steps=5, checkpoint_every=5)
    full = _small()
    Trainer(full, digits.train, TrainConfig(**cfg), progress=False, device="cpu").fit()
    ckpt = tmp_path / "c.safetensors"
    part = _small()
    _interrupted_fit(Trainer(part, digits.train, TrainConfig(**cfg), progress=False, device="cpu",
                             checkpoint=ckpt), at_step=5)  # fmt: skip
    resumed = _small(seed=9)
    Trainer(resumed, digits.train, TrainConfig(**cfg), progress=False, device="cpu", checkpoint=ckpt).fit(
        resume=True
    )
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), n


def test_a_checkpoint_from_fused_adam_resumes_unfused_and_matches(tmp_path, digits, monkeypatch):
    """GPU runs use fused Adam (training._fused); the checkpoint resumes on a CPU with torch's default
    optimizer, continuing the same run, and the resumed optimizer keeps its own implementation."""
    cfg = dict(steps=6, nets_per_step=4, batch_size=32, pretrain_max_steps=5, checkpoint_every=3)
    full = _small()
    Trainer(full, digits.train, TrainConfig(**cfg), progress=False, device="cpu").fit()
    ckpt = tmp_path / "c.safetensors"
    monkeypatch.setattr(training, "_fused", lambda device: True)  # as on a GPU
    t = Trainer(_small(), digits.train, TrainConfig(**cfg), progress=False, device="cpu", checkpoint=ckpt)
    assert all(g["fused"] for g in t.opt_g.param_groups)
    _interrupted_fit(t, at_step=3)
    monkeypatch.undo()
    resumed = _small(seed=9)
    t = Trainer(resumed, digits.train, TrainConfig(**cfg), progress=False, device="cpu", checkpoint=ckpt)
    result = t.fit(resume=True)
    assert all(g["fused"] is None for g in t.opt_g.param_groups)
    assert all(type(v) in (int, float) for row in result.history for v in row.values())  # read, not tensors
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), n


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, digits):
    t = Trainer(
        _small(),
        digits.train,
        TrainConfig(steps=2),
        progress=False,
        device="cpu",
        checkpoint=tmp_path / "none.safetensors",
    )
    with pytest.raises(HgdefendError, match="no checkpoint"):
        t.fit(resume=True)


def test_regression_hypergan_learns_cubic():
    data = load_data("cubic")
    torch.manual_seed(0)
    hg = HyperGAN(regression_1d(), noise_dim=16, code_dim=16, hidden=64, beta=0.1)
    cfg = TrainConfig(steps=300, nets_per_step=8, batch_size=20, lr=3e-3, lr_mixer=3e-3)
    before = quick_eval(hg.ensemble(8, seed=0), data.train, "regression")["ensemble_mse"]
    Trainer(hg, data.train, cfg, progress=False, device="cpu").fit()
    after = quick_eval(hg.ensemble(8, seed=0), data.train, "regression")["ensemble_mse"]
    assert after < 0.2 * before


def test_baselines_train_through_the_batched_path(digits):
    cfg = TrainConfig(steps=150, batch_size=64, lr=3e-3)
    de = deep_ensemble(digits_small(), digits.train, 3, cfg, progress=False, device="cpu")
    assert de.k == 3 and de.kind == "deep-ensemble"
    assert quick_eval(de, digits.test, "classification")["ensemble_acc"] > 0.85
    # independent initialisations: members differ
    assert not torch.allclose(de.params["0.weight"][0], de.params["0.weight"][1])
    single = single_network(digits_small(), digits.train, cfg, progress=False, device="cpu")
    assert single.k == 1
    mcd = mc_dropout(digits_small(), digits.train, 8, cfg, progress=False, device="cpu")
    assert mcd.k == 8 and mcd.mc_dropout
    logits = mcd.member_logits(digits.test.x[:16])
    assert not torch.allclose(logits[0], logits[1])  # different dropout masks


def test_bad_training_config():
    with pytest.raises(HgdefendError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(HgdefendError, match="lr"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(HgdefendError, match="time_budget_s"):
        TrainConfig(time_budget_s=-1.0)


# --------------------------------------------------------------------------- schedule and time budget
def _fake_clock(monkeypatch):
    """The training clock advances one second per reading: time-budget runs become deterministic."""
    ticks = itertools.count()
    monkeypatch.setattr(training, "_clock", lambda: float(next(ticks)))


def _record_lrs(monkeypatch) -> dict[int, list[list[float]]]:
    """Per Adam optimizer (by id), the learning rate of every param group at every step."""
    used: dict[int, list[list[float]]] = {}
    step = torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        used.setdefault(id(self), []).append([g["lr"] for g in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    return used


_TINY = dict(steps=1000, nets_per_step=4, batch_size=32, pretrain_max_steps=5)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_time_budget_drives_the_cosine_schedule(schedule, digits, monkeypatch):
    """A budget that stops the run after ~20 of 1,000 steps: the cosine still ends near 0."""
    _fake_clock(monkeypatch)
    used = _record_lrs(monkeypatch)
    cfg = TrainConfig(**_TINY, time_budget_s=40.0, lr_schedule=schedule)
    t = Trainer(_small(), digits.train, cfg, progress=False, device="cpu")
    res = t.fit()
    assert 5 < res.steps < 100
    for opt in (t.opt_g, t.opt_d):
        lrs = used[id(opt)]
        assert len(lrs) == res.steps
        first, last = lrs[0], lrs[-1]
        base = [g["initial_lr"] for g in opt.param_groups]
        assert first == pytest.approx(base, rel=0.01)  # one tick of 40 s gone: factor 0.998
        if schedule == "cosine":
            assert all(
                a >= b for prev, cur in itertools.pairwise(lrs) for a, b in zip(prev, cur, strict=True)
            )
            assert all(b <= 0.01 * a for a, b in zip(base, last, strict=True))  # annealed
        else:
            assert all(lr == first for lr in lrs)  # constant stays constant


def test_time_budget_drives_the_baselines_schedule(digits, monkeypatch):
    _fake_clock(monkeypatch)
    used = _record_lrs(monkeypatch)
    cfg = TrainConfig(**_TINY, time_budget_s=30.0)
    _, res = train_members(digits_small(), digits.train, 2, cfg, progress=False, device="cpu")
    (lrs,) = used.values()
    assert 5 < res.steps < 100 and len(lrs) == res.steps
    assert lrs[0][0] == pytest.approx(cfg.lr, rel=0.01) and lrs[-1][0] <= 0.01 * cfg.lr


def test_without_a_budget_the_schedule_follows_the_step_count(digits, monkeypatch):
    used = _record_lrs(monkeypatch)
    cfg = TrainConfig(**{**_TINY, "steps": 20})
    t = Trainer(_small(), digits.train, cfg, progress=False, device="cpu")
    t.fit()
    lrs = [group[0] for group in used[id(t.opt_g)]]
    expected = [cfg.lr * 0.5 * (1 + math.cos(math.pi * s / 20)) for s in range(20)]
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_resumed_budget_run_continues_its_schedule(tmp_path, digits, monkeypatch):
    """The checkpoint records the training time, so the resumed run's learning rates (and weights)
    are those of the uninterrupted run; resuming without the budget goes back to the step cosine."""
    cfg = TrainConfig(**_TINY, time_budget_s=40.0, checkpoint_every=5)
    _fake_clock(monkeypatch)
    used = _record_lrs(monkeypatch)
    full = Trainer(_small(), digits.train, cfg, progress=False, device="cpu")
    full.fit()
    full_lrs = used[id(full.opt_g)]

    ckpt = tmp_path / "c.safetensors"
    _fake_clock(monkeypatch)
    part = Trainer(_small(), digits.train, cfg, progress=False, device="cpu", checkpoint=ckpt)
    orig = part._step

    def interrupting(step, g):
        if step == 10:
            raise KeyboardInterrupt
        return orig(step, g)

    part._step = interrupting
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    _fake_clock(monkeypatch)
    resumed = Trainer(_small(seed=9), digits.train, cfg, progress=False, device="cpu", checkpoint=ckpt)
    resumed.fit(resume=True)
    assert used[id(resumed.opt_g)] == full_lrs[10:]
    for (n, a), (_, b) in zip(full.hg.state_dict().items(), resumed.hg.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), n

    no_budget = TrainConfig(**{**_TINY, "checkpoint_every": 5})
    again = Trainer(_small(), digits.train, no_budget, progress=False, device="cpu", checkpoint=ckpt)

    def stop(step, g):
        raise KeyboardInterrupt

    again._step = stop  # look at the learning rate the first resumed step would use
    with pytest.raises(KeyboardInterrupt):
        again.fit(resume=True)
    factor = [g["lr"] / g["initial_lr"] for g in again.opt_g.param_groups]
    step = len(full_lrs)
    assert factor == pytest.approx([0.5 * (1 + math.cos(math.pi * step / 1000))] * 2)


def test_progress_bar_is_silent_off_a_terminal(digits, capsys):
    cfg = TrainConfig(steps=3, batch_size=16)
    train_members(digits_small(), digits.train, 1, cfg, progress=True, device="cpu")
    assert capsys.readouterr().err == ""


def test_bar_total_follows_the_budget():
    assert training._expected_steps(10, 0, 10.0, 30.0, 1000) == 40
    assert training._expected_steps(10, 0, 10.0, 3000.0, 1000) == 1000
    assert training._expected_steps(10, 0, 10.0, -1.0, 1000) == 10
    assert training._expected_steps(105, 100, 5.0, 5.0, 1000) == 110  # rate of this call after a resume


def test_resolve_device_refuses_unknown_and_meta_devices():
    from hgdefend import HgdefendError
    from hgdefend.training import resolve_device

    assert resolve_device("cpu").type == "cpu"
    for bad in ("bogus", "meta", 3.5):
        with pytest.raises(HgdefendError, match="device: expected"):
            resolve_device(bad)


def test_checkpoints_keep_a_minimum_interval(monkeypatch):
    """Every step is due (checkpoint_every=1), but a checkpoint waits until the last one is
    checkpoint_min_interval_s seconds of training old; the final one is always written."""

    def run(gap: float) -> list[int]:
        _fake_clock(monkeypatch)  # one second per reading: one reading per step
        cfg = TrainConfig(steps=10, checkpoint_every=1, checkpoint_min_interval_s=gap)
        written: list[int] = []
        training._Loop(cfg, False, "t").run(0, lambda s, g: {}, None, lambda s, h, t: written.append(s), [])
        return written

    assert run(0.0) == list(range(1, 11))
    assert run(3.5) == [4, 8, 10]
    with pytest.raises(HgdefendError, match="checkpoint_min_interval_s"):
        TrainConfig(checkpoint_min_interval_s=-1.0)
