"""What ``hgdefend evaluate`` is asked to do: typed options, parsed and checked before any work.

Every option is a typed field (no free-form ``extra`` dict); :meth:`EvaluateOptions.checked`
parses the comma-separated CLI forms and validates everything, so bad input fails in a second,
not after minutes of training.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import HgdefendError
from ..vocab import ATTACK_NAMES, BASELINE_NAMES, DEFAULT_SUITE_ATTACKS, PROTOCOL_NAMES, SCORES

PLOT_NAMES = ("filters", "entropy-images")
"""Extra pictures ``evaluate --plots`` draws (the paper's appendix): ``filters``, the same first-layer
filter of 25 sampled networks (A.1); ``entropy-images``, the in-distribution test images with the
highest entropy and the OOD images with the lowest (A.2)."""


def parse_names(text: str | list | tuple | None, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """'fgsm,pgd' or ['fgsm'] → a tuple of known names (order kept, duplicates dropped)."""
    if text is None:
        return ()
    items = [s.strip().lower() for s in (text.split(",") if isinstance(text, str) else text)]
    items = [s for s in items if s]
    for s in items:
        if s not in allowed:
            raise HgdefendError(f"{what}: unknown name {s!r}; expected some of {', '.join(allowed)}")
    return tuple(dict.fromkeys(items))


def parse_numbers(text: str | list | tuple | None, what: str, *, minimum: float = 0.0) -> tuple[float, ...]:
    """'0.1,0.3' or [0.1, 0.3] → finite numbers >= ``minimum`` (duplicates dropped)."""
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for p in parts:
        if isinstance(p, str) and not p.strip():
            continue
        try:
            v = float(p)
        except (TypeError, ValueError):
            raise HgdefendError(
                f"{what}: expected comma-separated numbers >= {minimum:g} like 0.1,0.3, got {p!r}"
            ) from None
        if not (math.isfinite(v) and v >= minimum):
            raise HgdefendError(f"{what}: expected numbers >= {minimum:g}, got {p!r}")
        out.append(v)
    return tuple(dict.fromkeys(out))


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HgdefendError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def _fraction(value: object, name: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise HgdefendError(f"{name}: expected a number in (0, 1), got {value!r}") from None
    if not (math.isfinite(v) and 0.0 < v < 1.0):
        raise HgdefendError(f"{name}: expected a number in (0, 1), got {value!r}")
    return v


@dataclass
class AttackOptions:
    """The attack suite's knobs; every one is written into the report."""

    attacks: tuple[str, ...] = DEFAULT_SUITE_ATTACKS
    eps: tuple[float, ...] = (0.1, 0.3)
    protocols: tuple[str, ...] = ()  # (): paper,fixed; fixed,adaptive with attacks="all"
    baselines: tuple[str, ...] = ()  # BASELINE_NAMES; -adv and binary-detector train at max(eps)
    n_inputs: int = 200  # the first n test inputs are attacked (every method gets the same ones)
    steps: int = 40
    alpha: float | None = None  # None: 2.5 · eps / steps
    restarts: int = 1
    fgsm_grid: int = 10
    targets: int = 9  # runner-up classes the targeted attacks (apgd-t, apgd-ce-t) aim at (AutoAttack: 9)
    search_steps: int = 4  # score-search: binary-search steps of λ per input
    search_targets: int = 3  # score-search: runner-up classes per search step (0: untargeted)
    autoattack: bool = True  # ART's AutoAttack as plain robust accuracy (fixed sample and fresh draws)
    or_scores: tuple[str, ...] = ()  # also attack a detector flagging when any of these scores fires
    lambdas: tuple[float, ...] = (0.0, 1.0)
    eot_members: int | None = None  # None: K
    bank_size: int | None = None  # adaptive targets a fixed bank of this many sampled networks
    sanity_eps: float | None = None  # None: max(0.5, largest eps)
    baseline_steps: int | None = None  # None: the dataset recipe's steps
    target_fpr: float = 0.05
    seed: int = 0
    n_bootstrap: int = 100
    preset: str | None = None  # "default": the small section evaluate runs without --attacks

    @classmethod
    def default_section(cls, **refine: Any) -> AttackOptions:
        """The small adaptive section ``hgdefend evaluate`` runs without ``--attacks``.

        Chosen for speed on a 2-core CPU: the whole default ``hgdefend evaluate`` (train, score,
        report) must stay under 30 s, and it took about 12 s before attacks were on by default.

        * ``apgd-ce`` — APGD (Croce & Hein 2020) on the ensemble's cross-entropy: its step size
          adapts, so a short budget needs no tuning, and at equal gradients it is at least as
          strong as PGD (tests/test_apgd.py).
        * ``apgd-ce-t`` at the top 3 runner-up classes — targeted: every member pushed to the same
          wrong class keeps their disagreement low, which untargeted cross-entropy does not (it
          drives inputs to where members disagree, where the detector fires); the strongest
          attack on diverse models in tests/test_targeted_attacks.py.
        * the per-input worst case over all rows, checked against the Tramèr bound (measuring the
          accuracy at eps/2, where eps/2 is not in the run, with APGD-CE alone: the strongest attack
          on accuracy in those runs, and half the cost of both).
        * ``adaptive`` only — what an attacker who knows the defence does (EOT over fresh HyperGAN
          samples, loss CE − λ·score); the paper's early-stop protocol flatters the detector, and
          λ = 0 is already a full-budget attack (with EOT), so ``fixed`` would add little.
        * eps 0.1 and 0.3 — the two budgets of the measured MNIST runs (SECURITY.md): how much
          gets through grows with the budget; a row costs about a second on digits (1 thread).
        * λ (0, 1) — plain CE and the score-aware loss: the attacker's best of the two is kept.
        * 20 EOT members per step — a fifth of K = 100. The number of networks per step is what
          the attack's strength hangs on against a diverse model: on the off-data MNIST model
          (benchmarks/RESULTS.md, 2026-12-08) the targeted attack got 56 % of 50 inputs past an
          unseen 20-network judge with 10 networks per step, 78 % with 20 and 84 % with 40: the
          point kept per input is chosen on the attacker's own draws, and with few networks it
          is chosen on their noise.
        * 100 inputs, 20 steps — half the full suite's 200 inputs and 40 steps: the rate is
          still measured to ±10 % (95 %), at a quarter of the cost.
        * no baselines — each one trains a whole ensemble.
        * the sanity check runs (PGD on one fixed network at eps 0.5 must succeed).

        ``refine`` (the attack options given without ``--attacks``) overrides any of these.
        """
        settings: dict[str, Any] = {
            "attacks": ("apgd-ce", "apgd-ce-t"),
            "targets": 3,
            "autoattack": False,
            "eps": (0.1, 0.3),
            "protocols": ("adaptive",),
            "baselines": (),
            "n_inputs": 100,
            "steps": 20,
            "lambdas": (0.0, 1.0),
            "eot_members": 20,
        }
        settings.update({k: v for k, v in refine.items() if v is not None})
        return cls(**settings, preset="default")

    def __post_init__(self) -> None:
        if self.preset not in (None, "default"):
            raise HgdefendError(f"preset: expected None or 'default', got {self.preset!r}")
        every = self.attacks == "all" or (isinstance(self.attacks, (tuple, list)) and "all" in self.attacks)
        named = parse_names(self.attacks, ATTACK_NAMES + ("all",), "attacks") if not every else ATTACK_NAMES
        self.attacks = named or DEFAULT_SUITE_ATTACKS
        default_protocols = ("fixed", "adaptive") if every else ("paper", "fixed")
        self.protocols = parse_names(self.protocols, PROTOCOL_NAMES, "protocols") or default_protocols
        if every and "paper" in self.protocols:
            raise HgdefendError(
                "protocols: --attacks all includes APGD, which has no early stop, so the paper protocol "
                "(stop once fooled) does not apply; pass --protocols fixed,adaptive or name the attacks"
            )
        if "score-search" in self.attacks and "adaptive" not in self.protocols:
            raise HgdefendError(
                "attacks: score-search attacks the detector's score, so it runs only under the adaptive "
                "protocol; add adaptive to --protocols"
            )
        no_early_stop = [a for a in self.attacks if a.startswith("apgd")]
        if no_early_stop and "paper" in self.protocols:
            raise HgdefendError(
                f"protocols: {', '.join(no_early_stop)} has no early stop, so the paper protocol (stop "
                "once fooled) does not apply to it; pass --protocols fixed,adaptive"
            )
        self.baselines = parse_names(self.baselines, BASELINE_NAMES, "baselines")
        self.or_scores = parse_names(self.or_scores, SCORES, "or_scores")
        if len(self.or_scores) == 1:
            raise HgdefendError(
                "or_scores: name two or more scores to combine, e.g. entropy,mutual_information"
            )
        self.eps = parse_numbers(self.eps, "eps") or (0.1, 0.3)
        at_eps = [b for b in self.baselines if b.endswith("-adv") or b == "binary-detector"]
        if at_eps and max(self.eps) <= 0:
            raise HgdefendError(
                f"baselines: {', '.join(at_eps)} train on inputs crafted at the largest eps, which is 0; "
                "pass a positive --eps"
            )
        for name in ("n_inputs", "steps", "restarts", "fgsm_grid", "targets", "search_steps"):
            _positive_int(getattr(self, name), name)
        _positive_int(self.search_targets, "search_targets", 0)
        _positive_int(self.n_bootstrap, "n_bootstrap", 0)
        if self.alpha is not None:
            parse_numbers([self.alpha], "alpha")
        if self.sanity_eps is not None:
            parse_numbers([self.sanity_eps], "sanity_eps")
        for name in ("eot_members", "bank_size", "baseline_steps"):
            if getattr(self, name) is not None:
                _positive_int(getattr(self, name), name)
        self.lambdas = parse_numbers(self.lambdas, "lambdas") or (0.0,)
        self.target_fpr = _fraction(self.target_fpr, "target_fpr")

    def describe(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class EvaluateOptions:
    """Options of ``hgdefend evaluate`` (the CLI flags, one field each)."""

    dataset: str | None = None  # None: the model file's dataset, else digits
    data_root: str | None = None
    download: bool = False
    trust_data_root: bool = False  # CIFAR-10's pickled batches are read only when True
    in_classes: str | None = "auto"
    ood: str | None = None
    model: str | None = None
    onnx: str | None = None  # an exported .onnx file to evaluate (``model``: its source, optional)
    out: str = "hgdefend-report"
    seed: int = 0
    device: str | None = None
    members: int = 100
    train_steps: int | None = None
    time_budget: float | None = None
    regulariser: str = "gan"
    beta: float = 1.0
    target_fpr: float = 0.05
    fail_under: str | None = None
    # attacks: without ``attacks``, a model is attacked by AttackOptions.default_section() (the rest
    # refine it) unless ``no_attacks``; with ``attacks``, the full suite (the rest refine it)
    no_attacks: bool = False
    attacks: str | tuple[str, ...] | None = None
    eps: str | tuple[float, ...] | None = None
    protocols: str | tuple[str, ...] | None = None
    baselines: str | tuple[str, ...] | None = None
    attack_inputs: int | None = None
    attack_steps: int | None = None
    attack_targets: int | None = None
    attack_or_scores: str | tuple[str, ...] | None = None
    attack_alpha: float | None = None
    attack_lambdas: str | tuple[float, ...] | None = None
    eot_members: int | None = None
    bank_size: int | None = None
    baseline_steps: int | None = None
    attack_bootstrap: int | None = None
    plots: str | tuple[str, ...] | None = None  # PLOT_NAMES: the appendix pictures to draw
    quiet: bool = False
    progress: bool | None = None  # None: only when not quiet and stderr is a terminal

    def attack_options(self) -> AttackOptions | None:
        """The attack section's options, or ``None`` when no attack runs. Raises on bad names or
        numbers, and on attack options together with ``no_attacks``.

        * ``attacks`` given: the full suite (:class:`AttackOptions` defaults), refined by the rest.
        * no ``attacks``, a model: :meth:`AttackOptions.default_section`, refined by the rest.
        * no ``attacks``, an exported file (``onnx``): none (transfer attacks need ``attacks``).
        * ``no_attacks``: none.
        """
        given = {
            "eps": self.eps,
            "protocols": self.protocols,
            "baselines": self.baselines,
            "n_inputs": self.attack_inputs,
            "steps": self.attack_steps,
            "targets": self.attack_targets,
            "or_scores": self.attack_or_scores,
            "alpha": self.attack_alpha,
            "lambdas": self.attack_lambdas,
            "eot_members": self.eot_members,
            "bank_size": self.bank_size,
            "baseline_steps": self.baseline_steps,
            "n_bootstrap": self.attack_bootstrap,
        }
        refine = {k: v for k, v in given.items() if v is not None}
        if self.no_attacks:
            if self.attacks:
                raise HgdefendError("no_attacks: --no-attacks and --attacks contradict each other; pass one")
            if refine:
                raise HgdefendError(
                    "no_attacks: --eps, --protocols, --attack-inputs and the other attack options "
                    "refine the attack section, which --no-attacks turns off; pass one or the other"
                )
            return None
        common = {"target_fpr": self.target_fpr, "seed": self.seed}
        if self.attacks:
            return AttackOptions(attacks=self.attacks, **common, **refine)
        if self.onnx is not None:
            if refine:
                raise HgdefendError(
                    "attacks: with --onnx, --eps, --protocols, --baselines and the other attack "
                    "options need --attacks (e.g. --attacks fgsm,pgd)"
                )
            return None
        return AttackOptions.default_section(**common, **refine)

    def checked(self) -> EvaluateOptions:
        """Validate every field that can be checked without data (raises :class:`HgdefendError`)."""
        _positive_int(self.members, "members")
        _fraction(self.target_fpr, "target_fpr")
        if self.train_steps is not None:
            _positive_int(self.train_steps, "train_steps")
        if self.time_budget is not None and not (
            isinstance(self.time_budget, (int, float))
            and math.isfinite(self.time_budget)
            and self.time_budget > 0
        ):
            raise HgdefendError(
                f"time_budget: expected a positive number of seconds, got {self.time_budget!r}"
            )
        if not math.isfinite(float(self.beta)) or float(self.beta) < 0:
            raise HgdefendError(f"beta: expected a finite number >= 0, got {self.beta!r}")
        attack = self.attack_options()
        if self.onnx is not None:
            if not isinstance(self.onnx, (str, os.PathLike)) or not str(self.onnx):
                raise HgdefendError(f"onnx: expected the path of an .onnx file, got {self.onnx!r}")
            if attack is not None and attack.baselines:
                raise HgdefendError(
                    "baselines: not available with onnx (an exported file is scored against transfer "
                    "attacks from its source model; evaluate the model file to compare baselines)"
                )
        return replace(self, plots=parse_names(self.plots, PLOT_NAMES, "plots"))


def resolve_in_classes(
    opts: EvaluateOptions, dataset: str, model_config: dict | None = None
) -> str | list | None:
    """'auto': a given model's own classes; else, on digits with no --ood dataset, classes 0-4
    in-distribution so that 5-9 are the OOD set."""
    if opts.in_classes == "auto":
        if model_config is not None:
            classes = model_config.get("dataset", {}).get("classes")
            n_all = model_config.get("dataset", {}).get("num_classes_all")
            return classes if classes and n_all and len(classes) < n_all else None
        return "0-4" if dataset == "digits" and not opts.ood else None
    if opts.in_classes in (None, "", "all"):
        return None
    return opts.in_classes
