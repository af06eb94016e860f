"""Training and evaluation across processes (hgdefend.distributed): gloo on the CPU, 2 processes.

"The same model as one process" means: after ``STEPS`` = 8 steps from the same seed, every weight
is within ``SAME_ATOL`` = 1e-4 (a tenth of one Adam step at the learning rate 1e-3) of the
one-process run's, and every tensor's difference is under ``SAME_RTOL`` = 0.1 % of the distance the
training moved it; the training moved the weights by far more (checked) and another seed lands
elsewhere. The two updates are the same sums of the same terms in a different order (each rank's
mean over half the members or half the minibatch, then the mean of the two gradients): the
gradients agree to ~7e-8 relative (measured). Adam divides each gradient by its running RMS, which
turns round-off in near-zero gradient elements into updates of up to the learning rate: perturbing
a one-process run's gradients by a relative 1e-7 moves its weights by 3.9e-5 after 8 steps, the
same as 2 processes vs 1 (3.9e-5 with both splits, measured). Hence the tolerance.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hgdefend import HyperGAN, TrainConfig, Trainer, load_data
from hgdefend.distributed import (
    Distributed,
    DistributedError,
    init_distributed,
    shard_bounds,
    shard_sizes,
    sharded_map,
)
from hgdefend.io import load_model
from hgdefend.recipes import train_model
from hgdefend.targets import digits_small
from hgdefend.validation import HgdefendError
from tests.conftest import run_benchmark

SAME_ATOL = 1e-4
SAME_RTOL = 1e-3
STEPS = 8
ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "hgdefend.cli", *args]  # fmt: skip


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in load_model(path).hypergan.state_dict().items()}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ------------------------------------------------------------------ (a) the same model as one process
@pytest.mark.parametrize("split", ["members", "batch"])
def test_two_processes_train_the_same_model_as_one(tmp_path, digits, split):
    out = tmp_path / "two"
    run = subprocess.run(
        _torchrun("train", "--dataset", "digits", "--out", str(out), "--steps", str(STEPS), "--seed", "3",
                  "--eval-every", "0", "--checkpoint-every", "0", "--threads", "1", "--quiet",
                  "--dist-split", split),
        capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    two = _weights(out / "model.safetensors")

    torch.manual_seed(3)  # the initial weights, as train_model draws them
    init = {k: v.clone() for k, v in HyperGAN(digits_small(), noise_dim=64, code_dim=32,
                                               hidden=128).state_dict().items()}  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: the same kernels, whatever HGDEFEND_TEST_THREADS says
    try:
        one = train_model(digits, seed=3, device="cpu", steps=STEPS, progress=False).hypergan.state_dict()
        other = train_model(digits, seed=4, device="cpu", steps=STEPS, progress=False).hypergan.state_dict()
    finally:
        torch.set_num_threads(threads)

    diff = _max_diff(one, two)
    assert diff <= SAME_ATOL, f"2 processes vs 1: max |Δw| = {diff:.3g} > {SAME_ATOL}"
    for k in one:
        rel = float((one[k] - two[k]).norm() / (one[k] - init[k]).norm())
        assert rel <= SAME_RTOL, f"{k}: |Δw| is {rel:.3g} of the distance trained"
    assert _max_diff(one, init) > 10 * SAME_ATOL  # the steps moved the weights: the check has teeth
    assert _max_diff(one, other) > 100 * SAME_ATOL
    log = (out / "train_log.json").read_text()
    assert f'"split": "{split}"' in log and '"world_size": 2' in log


# ------------------------------------------------------------------ workers for (b) and (c)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _small_hypergan() -> HyperGAN:
    torch.manual_seed(0)
    return HyperGAN(digits_small(), noise_dim=16, code_dim=8, hidden=32)


def _eval_inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    test = load_data("digits").test
    return test.x[:n], test.y[:n]


def _evaluate(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What the sharded evaluation computes per input: scores, predictions and an FGSM attack."""
    from hgdefend.attacks.fgsm import FGSM
    from hgdefend.detectors.scores import compute_scores

    ens = _small_hypergan().ensemble(5, seed=1)
    with torch.no_grad():
        logits = ens.forward_logits(x)
    scores = compute_scores(logits, ("entropy", "mutual_information"))
    x_adv = FGSM(ens, eps=0.1).perturb(x, y)
    return scores["entropy"], scores["mutual_information"], logits.mean(0).argmax(-1), x_adv


def _worker(rank: int, world: int, port: int, mode: str, out: str, timeout_s: float) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    dist = init_distributed(device="cpu", timeout_s=timeout_s)
    if mode == "agree":
        _agree_worker(rank, dist, Path(out))
        return
    if mode.startswith("shard"):
        x, y = _eval_inputs(int(mode.split(":")[1]))
        lin, unused = torch.nn.Linear(3, 2), torch.nn.Parameter(torch.ones(2))
        lin.weight.grad, lin.bias.grad = torch.full((2, 3), rank + 1.0), torch.full((2,), 2.0 * rank)
        dist.average_gradients([lin.weight, lin.bias, unused])  # `unused` has no gradient
        grads = (lin.weight.grad, lin.bias.grad, unused.grad)
        torch.save((dist.sharded_map(_evaluate, x, y), grads), Path(out) / f"rank{rank}.pt")
        dist.close()
        return
    cfg = TrainConfig(steps=200, nets_per_step=4, batch_size=32, pretrain_max_steps=5)
    trainer = Trainer(_small_hypergan(), load_data("digits").train, cfg, progress=False, device="cpu",
                      dist=dist)  # fmt: skip
    step_fn = trainer._step

    def step(s: int, g: torch.Generator) -> dict:
        if rank == 1 and s == 3:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(120)  # "hang": alive, but never reaches the next collective
        return step_fn(s, g)

    trainer._step = step
    t0 = time.monotonic()
    try:
        trainer.fit()
    except DistributedError as exc:
        (Path(out) / f"rank{rank}.txt").write_text(f"{time.monotonic() - t0:.2f}\n{exc}")
        os._exit(3)
    os._exit(0)


def _agree_worker(rank: int, dist, out: Path) -> None:
    """Checkpoints at most every 15 s of training, every step due; rank 0's clock moves 10 s a step,
    rank 1's stands still. Each step all-reduces gradients, the checkpoint is a barrier: the ranks
    must agree on every checkpoint, or their collectives mismatch."""
    from hgdefend import training

    ticks = iter(range(0, 100_000, 10)) if rank == 0 else iter([0] * 100_000)
    training._clock = lambda: float(next(ticks))
    lin = torch.nn.Linear(3, 2)

    def step(s: int, g: torch.Generator) -> dict:
        lin.weight.grad, lin.bias.grad = torch.ones(2, 3), torch.ones(2)
        dist.average_gradients([lin.weight, lin.bias])
        return {}

    written: list[int] = []

    def checkpoint(s: int, history: list, seconds: float) -> None:
        written.append(s)
        dist.run_once("writing the checkpoint", lambda: None)

    cfg = TrainConfig(steps=6, checkpoint_every=1, checkpoint_min_interval_s=15.0)
    loop = training._Loop(cfg, False, "t")
    loop.agree = lambda flag: dist.agree(flag, "the checkpoint decision")
    loop.run(0, step, None, checkpoint, [])
    (out / f"rank{rank}.txt").write_text(",".join(map(str, written)))
    dist.close()


def _spawn(mode: str, out: Path, timeout_s: float = 20.0, world: int = 2) -> list:
    ctx = torch.multiprocessing.get_context("spawn")
    port = _free_port()
    args = [(r, world, port, mode, str(out), timeout_s) for r in range(world)]
    procs = [ctx.Process(target=_worker, args=a) for a in args]
    for p in procs:
        p.start()
    return procs


# ------------------------------------------------------------------ (b) a lost rank fails the run
@pytest.mark.parametrize("mode", ["kill", "hang"])
def test_a_lost_rank_fails_the_run_with_one_clear_error(tmp_path, mode):
    timeout_s = 5.0
    procs = _spawn(mode, tmp_path, timeout_s=timeout_s)
    t0 = time.monotonic()
    try:
        procs[0].join(60)
        waited = time.monotonic() - t0
        assert not procs[0].is_alive(), "rank 0 hung after rank 1 was lost"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(10)
    assert procs[0].exitcode == 3
    if mode == "kill":
        assert procs[1].exitcode == -signal.SIGKILL
    seconds, message = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert message.startswith("distributed: the gradient all-reduce failed on rank 0 of 2")
    assert "rank 1 stopped answering" in message
    assert f"{timeout_s:g} s timeout" in message
    # a crash is seen at once; a hang after the timeout (+ up to 5 s to see who is missing)
    assert float(seconds) < (10 if mode == "kill" else timeout_s + 10)
    assert waited < 45


def test_a_killed_torchrun_rank_stops_the_cli_run(tmp_path):
    """SIGKILL one rank of ``torchrun ... hgdefend.cli train``: the run exits non-zero within a bounded
    time (no hang), and the failure names the lost rank."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _torchrun("train", "--dataset", "digits", "--out", str(out), "--steps", "100000",
                  "--eval-every", "0", "--checkpoint-every", "1", "--checkpoint-min-interval", "0",
                  "--threads", "1", "--quiet", "--dist-timeout", "20"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not (out / "checkpoint.safetensors").exists():  # training is under way
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.2)
        rank1 = _rank_pid(proc.pid, 1)
        os.kill(rank1, signal.SIGKILL)
        t0 = time.monotonic()
        output, _ = proc.communicate(timeout=40)
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert waited < 40
    named = re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*-9", output)
    ours = "rank 1 stopped answering" in output
    assert named or ours, output[-3000:]
    assert not (out / "model.safetensors").exists()  # no model from a failed run


def _rank_pid(launcher: int, rank: int) -> int:
    """The pid of the launcher's worker with RANK=rank (Linux /proc)."""
    todo, seen = [launcher], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if pid != launcher and f"RANK={rank}".encode() in env:
                return pid
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher}")


def test_ranks_agree_on_time_spaced_checkpoints(tmp_path):
    """A checkpoint spaced by training time is rank 0's decision on every rank (their clocks differ)."""
    procs = _spawn("agree", tmp_path)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == ["2,4,6", "2,4,6"]


# ------------------------------------------------------------------ (c) sharded evaluation
@pytest.mark.parametrize("n", [101, 1])
def test_sharded_evaluation_gathers_results_in_input_order(tmp_path, n):
    """101 inputs split 51 + 50 (uneven), and 1 input (rank 1 gets none): every rank gets the whole
    result, in input order, equal to computing it in one process."""
    procs = _spawn(f"shard:{n}", tmp_path)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    x, y = _eval_inputs(n)
    expected = _evaluate(x, y)
    for rank in range(2):
        got, grads = torch.load(tmp_path / f"rank{rank}.pt")
        # every rank's gradients are the mean over the ranks (not the sum); none counts as zeros
        assert torch.equal(grads[0], torch.full((2, 3), 1.5)) and torch.equal(grads[1], torch.ones(2))
        assert torch.equal(grads[2], torch.zeros(2))
        assert isinstance(got, tuple) and len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert g.shape == e.shape and g.dtype == e.dtype
            torch.testing.assert_close(g, e, rtol=0, atol=1e-6)
    assert len(expected[0]) == n and float(expected[0].std() if n > 1 else 1.0) > 0  # distinct rows


def test_shards_cover_the_inputs_once_in_order():
    for n in (0, 1, 7, 100, 101):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(n, world, r) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            sizes = shard_sizes(n, world)
            assert sum(sizes) == n and max(sizes) - min(sizes) <= 1


def test_one_process_paths_are_unchanged(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed() is None  # not launched by torchrun
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed() is None  # torchrun with one process: the one-process path
    x = torch.arange(10.0)
    assert torch.equal(sharded_map(lambda t: t * 2, x), x * 2)


def test_bad_arguments_name_the_argument(monkeypatch, digits):
    with pytest.raises(HgdefendError, match="split"):
        init_distributed(split="layers")
    with pytest.raises(HgdefendError, match="timeout_s"):
        init_distributed(timeout_s=0)
    with pytest.raises(HgdefendError, match="inputs"):
        sharded_map(lambda a, b: a, torch.zeros(3), torch.zeros(4))
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedError, match="RANK 2"):
        init_distributed()
    fake = Distributed(0, 2, 0, torch.device("cpu"), "gloo", 5.0, "members")
    with pytest.raises(HgdefendError, match="nets_per_step: 3"):
        fake.check_config(TrainConfig(nets_per_step=3), 100)
    with pytest.raises(HgdefendError, match="diversity"):
        fake.check_config(TrainConfig(nets_per_step=4, diversity="repulsion", diversity_weight=1.0), 100)
    with pytest.raises(HgdefendError, match="time_budget_s"):
        fake.check_config(TrainConfig(nets_per_step=4, time_budget_s=10), 100)
    from hgdefend.distributed import _rank_device

    assert _rank_device("cpu", 1) == torch.device("cpu")
    for bad in ("bogus", "meta", "cuda:1"):  # cuda:1 is never rank 0's device
        with pytest.raises(HgdefendError, match="device"):
            _rank_device(bad, 0)
    with pytest.raises(HgdefendError, match="batch_size: a minibatch of 33"):
        Distributed(0, 2, 0, torch.device("cpu"), "gloo", 5.0, "batch").check_config(
            TrainConfig(batch_size=33), 100
        )


def test_dist_options_need_torchrun(tmp_path):
    from click.testing import CliRunner

    from hgdefend.cli.main import cli

    env = {"RANK": None, "WORLD_SIZE": None}
    res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "o"), "--dist-split", "batch"], env=env)
    assert res.exit_code != 0 and "only for a run started by torchrun" in res.output
    for bad in ("0", "-1", "nan", "inf"):
        res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "o"), "--dist-timeout", bad], env=env)
        assert res.exit_code == 2 and "--dist-timeout: expected" in res.output, res.output


# ------------------------------------------------------------------ the benchmark
def test_distributed_speed_benchmark_quick():
    import json

    res = json.loads(run_benchmark("distributed_speed.py", "--quick"))
    assert res["benchmark"] == "distributed_speed"
    assert res["same_model_max_abs_diff"] <= SAME_ATOL
    for row in res["runs"]:
        assert row["seconds_per_step"] > 0
    assert res["speedup"] > 0
    assert len(res["loadavg_before"]) == 3
