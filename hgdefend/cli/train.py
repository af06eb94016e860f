"""``hgdefend train``: fit a HyperGAN and write a safe model file."""

from __future__ import annotations

import json
import os

import click

from ..vocab import ADVERSARIAL_METHODS, DIVERSITY_OBJECTIVES, REGULARISERS
from .common import (
    CLIError,
    backbone_options,
    common_options,
    default_threads,
    echo,
    friendly_errors,
    get_backbone,
    set_threads,
    trust_data_root_option,
)

DIST_SPLITS = ("members", "batch")
"""hgdefend.distributed.SPLITS (repeated: --help does not import torch)."""

OUTPUTS = ("model.safetensors", "checkpoint.safetensors", "train_log.json")
"""The files ``train`` writes into ``--out``."""


@click.command()
@click.option(
    "--dataset",
    default="digits",
    show_default=True,
    help="digits, mnist, fashion-mnist, cifar10, cubic, or a .npz file with x and y.",
)
@click.option("--data-root", default=None, help="Folder in torchvision's layout (mnist, ...).")
@click.option("--download", is_flag=True, help="Let torchvision download missing data.")
@trust_data_root_option()
@click.option("--in-classes", default=None, help="Train on these classes only, e.g. 0-4.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for model.safetensors, checkpoint and training log.",
)
@click.option("--steps", type=int, default=None, help="Training steps (default: per dataset).")
@click.option("--nets-per-step", type=int, default=None, help="Networks sampled per step.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None, help="Generator learning rate.")
@click.option("--regulariser", type=click.Choice(REGULARISERS), default="gan", show_default=True)
@click.option(
    "--beta",
    type=float,
    default=1.0,
    show_default=True,
    help="Weight of the latent-code regulariser.",
)
@click.option(
    "--diversity",
    type=click.Choice(DIVERSITY_OBJECTIVES),
    default="none",
    show_default=True,
    help="Objective that pushes sampled networks apart (see hgdefend.diversity).",
)
@click.option(
    "--diversity-weight",
    type=float,
    default=None,
    help="Weight of --diversity [default: 1.0 with an objective, 0 without].",
)
@click.option(
    "--adversarial",
    type=click.Choice(ADVERSARIAL_METHODS),
    default="none",
    show_default=True,
    help="Adversarial training against each step's sampled networks: pgd (Madry), fgsm (random "
    "start, cheap), trades (see hgdefend.adversarial).",
)
@click.option("--eps", "adv_eps", type=float, default=None, help="L∞ budget of --adversarial [default: 0.3].")
@click.option("--adv-steps", type=int, default=None, help="Attack steps of pgd/trades [default: 7].")
@click.option("--adv-alpha", type=float, default=None, help="Attack step size [default: 2.5·eps/steps].")
@click.option("--trades-beta", type=float, default=None, help="TRADES' KL weight [default: 6].")
@click.option(
    "--adv-eps-warmup",
    type=int,
    default=None,
    metavar="STEPS",
    help="Ramp --eps linearly up from 0 over this many steps [default: 0, the full eps from the start].",
)
@click.option("--noise-dim", type=int, default=None, help="HyperGAN noise size [default: per dataset].")
@click.option("--code-dim", type=int, default=None, help="Per-layer code size [default: per dataset].")
@click.option("--hidden", type=int, default=None, help="Hidden width of mixer and generators.")
@click.option(
    "--no-mixer",
    is_flag=True,
    help="The paper's ablation: independent noise per layer (the codes are then the noise itself, so "
    "--regulariser has nothing to train: no mixer means no regulariser too).",
)
@click.option("--eval-every", type=int, default=100, show_default=True)
@click.option(
    "--checkpoint-every", type=int, default=100, show_default=True, help="Steps between checkpoints."
)
@click.option(
    "--checkpoint-min-interval",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds of training at least between two checkpoints (the last one is always written): "
    "on a fast GPU 100 steps take under a second, and a checkpoint of the MNIST recipe holds ~200 MB.",
)
@click.option(
    "--time-budget",
    type=float,
    default=None,
    help="Stop after this many seconds of training (with --resume: in total); the learning rate "
    "anneals over the budget.",
)
@click.option(
    "--cuda-graph",
    is_flag=True,
    help="Capture the training step once as a CUDA graph and replay it (fewer kernel launches; "
    "GPU only, plain recipe: no --adversarial, --diversity or torchrun).",
)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.safetensors.")
@click.option(
    "--dist-split",
    type=click.Choice(DIST_SPLITS),
    default=None,
    help="Under torchrun: give each rank a share of every step's networks (members, the default) or of "
    "its minibatch (batch); the same model as one process either way.",
)
@click.option(
    "--dist-timeout",
    type=float,
    default=None,
    help="Under torchrun: seconds a rank waits for the others before the run fails [default: 300].",
)
@click.option(
    "--compact", default=None, metavar="MODE",
    help="With --generate: how the generated part is parametrised: full (an offset per weight, the "
    "default), scales (a scale per output channel of each layer: for a whole block such as layer4) or "
    "lowrank:R (rank-R offsets); one mode for all names, or per name: layer4=scales,fc=full.",
)  # fmt: skip
@backbone_options(generate=True)
@common_options
@friendly_errors
def train(dataset, data_root, download, trust_data_root, in_classes, out_dir, steps, nets_per_step,
          batch_size, lr, regulariser, beta, diversity, diversity_weight, adversarial, adv_eps,
          adv_steps, adv_alpha, trades_beta, adv_eps_warmup, noise_dim, code_dim, hidden,
          no_mixer, eval_every, checkpoint_every, checkpoint_min_interval, time_budget, cuda_graph, resume,
          dist_split, dist_timeout, compact, backbone, backbone_weights, generate, seed, device, threads,
          quiet) -> None:  # fmt: skip
    """Train a HyperGAN on DATASET and save OUT/model.safetensors.

    With --backbone and --generate, the HyperGAN generates only the named head of your pretrained
    model, as offsets around its weights; the rest stays frozen, and the model file records the
    SHA-256 of those weights (loading it needs the same --backbone and --backbone-weights).

    Started by torchrun (torchrun --nproc-per-node N -m hgdefend.cli train ...), the N processes
    train one HyperGAN together (hgdefend.distributed) and rank 0 writes the files.
    """
    from ..data import load_data
    from ..distributed import check_timeout, init_distributed, launched
    from ..fileio import FolderLock, check_output
    from ..recipes import train_model
    from ..training import resolve_device

    if dist_timeout is not None:
        check_timeout(dist_timeout, "--dist-timeout")
    if not launched() and (dist_split is not None or dist_timeout is not None):
        raise CLIError("--dist-split/--dist-timeout: only for a run started by torchrun")
    dist = init_distributed(device=device, timeout_s=dist_timeout, split=dist_split or "members")
    if dist is not None and threads is None:  # the ranks on one machine share its cores
        threads = max(1, default_threads() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    set_threads(threads)
    names = _generate_names(generate, backbone)
    modes = _compact_modes(compact, names)
    dev = dist.device if dist is not None else resolve_device(device)
    out = check_output(out_dir, name="--out")
    for name in OUTPUTS:  # before training: a link planted at a name we write is refused now
        check_output(out / name, refuse=[dataset], name="--out")
    ckpt = out / "checkpoint.safetensors"
    if resume and not ckpt.is_file():
        raise CLIError(f"--resume: no checkpoint at {ckpt}")
    data = load_data(dataset, root=data_root, download=download, in_classes=in_classes,
                     trust_data_root=trust_data_root)  # fmt: skip
    module = get_backbone(backbone, backbone_weights)
    with FolderLock(out, "--out") as lock:
        if dist is None or dist.is_main:  # under torchrun rank 0 writes the files
            lock.acquire()  # a second run into the same folder is refused before it trains
        trained = train_model(data, seed=seed, device=dev, steps=steps, nets_per_step=nets_per_step,
                              batch_size=batch_size, lr=lr, regulariser=regulariser, beta=beta,
                              diversity=diversity,
                              diversity_weight=(1.0 if diversity != "none" else 0.0)
                              if diversity_weight is None else diversity_weight,
                              adversarial=adversarial, adv_eps=adv_eps, adv_steps=adv_steps,
                              adv_alpha=adv_alpha, trades_beta=trades_beta, adv_eps_warmup=adv_eps_warmup,
                              noise_dim=noise_dim, code_dim=code_dim, hidden=hidden, mixer=not no_mixer,
                              eval_every=eval_every, checkpoint_every=checkpoint_every,
                              checkpoint_min_interval=checkpoint_min_interval,
                              time_budget=time_budget, cuda_graph=cuda_graph, checkpoint=ckpt, resume=resume,
                              progress=not quiet, backbone=module, generate=names, dist=dist,
                              compact=modes)  # fmt: skip
        if dist is None or dist.is_main:  # rank 0 writes; the others wait at the barrier below
            _write_outputs(out, trained, data, dist, quiet)
    if dist is not None:
        # every rank leaves together, after rank 0 has written, without gloo's teardown (which
        # sometimes aborted a rank at exit and failed a finished run)
        dist.exit_together("the barrier after writing the model")


def _write_outputs(out, trained, data, dist, quiet: bool) -> None:
    """The model file and the training log (rank 0's job under torchrun)."""
    from ..fileio import atomic_write
    from ..io import save_model

    result = trained.result
    sha = save_model(out / "model.safetensors", trained.hypergan, dataset=data.describe(),
                     training=trained.file_record)  # fmt: skip
    atomic_write(out / "train_log.json", json.dumps(
        {"history": result.history, "mixer_pretrain": result.mixer_pretrain, "sha256": sha,
         "seconds": round(result.seconds, 2),
         **({"distributed": dist.describe()} if dist is not None else {})},
        indent=2))  # fmt: skip
    if not quiet:
        acc = trained.training["final"].get("ensemble_acc")
        echo(f"wrote {out / 'model.safetensors'} (sha256 {sha[:16]}…) after {result.steps} "
             f"steps, {result.seconds:.1f} s"
             + (f"; calibration accuracy of a 10-network ensemble {100 * acc:.2f} %"
                if acc is not None else ""))  # fmt: skip


def _generate_names(generate: str | None, backbone: str | None) -> list[str] | None:
    if generate is None:
        if backbone is not None:
            raise CLIError("--generate: name the submodules of --backbone to generate, e.g. --generate fc")
        return None
    if backbone is None:
        raise CLIError("--generate: needs --backbone (the pretrained model whose head it names)")
    names = [n.strip() for n in generate.split(",")]
    if not all(names):
        raise CLIError(f"--generate: expected a comma list of submodule names like fc, got {generate!r}")
    return names


def _compact_modes(compact: str | None, names: list[str] | None) -> str | dict[str, str] | None:
    """``--compact scales`` (every generated name) or ``--compact layer4=scales,fc=full``."""
    if compact is None:
        return None
    if names is None:
        raise CLIError("--compact: needs --generate (it parametrises the generated submodules)")
    from ..targets.head import check_compact_mode

    if "=" not in compact:
        return check_compact_mode(compact.strip(), "--compact")
    modes: dict[str, str] = {}
    for item in compact.split(","):
        name, eq, mode = (part.strip() for part in item.partition("="))
        if not eq or name not in names or name in modes:
            raise CLIError(
                f"--compact: expected a mode, or NAME=MODE for names of --generate ({','.join(names)}) "
                f"each at most once, got {compact!r}"
            )
        modes[name] = check_compact_mode(mode, f"--compact {name}")
    return modes
