"""ART integration: unchanged ART attacks run on HyperGANClassifier; the EvasionDetector; bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from art.attacks.evasion import (
    AutoAttack,
    AutoProjectedGradientDescent,
    CarliniL2Method,
    DeepFool,
    FastGradientMethod,
    ProjectedGradientDescent,
    SquareAttack,
)
from torch import nn

from hgdefend import HgdefendError, HyperGAN, ModuleTarget, TrainConfig
from hgdefend.art import EntropyEvasionDetector, HyperGANClassifier, detector_classifier

N = 40  # test images attacked
EPS = 0.2


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """ART's attacks make many small torch calls: on 2 cores one thread was measured far faster."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def clf(trained_digits):
    return HyperGANClassifier(trained_digits, clip_values=(0.0, 1.0), device_type="cpu", members=10, seed=0)


@pytest.fixture(scope="module")
def xy(digits):
    return digits.test.x[:N].numpy(), digits.test.y[:N].numpy()


def _acc(clf, x, y):
    return float((clf.predict(x).argmax(1) == y).mean())


ATTACKS = {
    "fgsm": (lambda c: FastGradientMethod(c, eps=EPS), np.inf, EPS),
    "pgd": (lambda c: ProjectedGradientDescent(c, eps=EPS, eps_step=0.05, max_iter=10, verbose=False),
            np.inf, EPS),
    "apgd": (lambda c: AutoProjectedGradientDescent(c, eps=EPS, eps_step=0.05, max_iter=10, nb_random_init=1,
                                                    verbose=False), np.inf, EPS),
    "autoattack": (lambda c: AutoAttack(c, eps=EPS, eps_step=0.05, attacks=[
        AutoProjectedGradientDescent(c, eps=EPS, eps_step=0.05, max_iter=10, nb_random_init=1, verbose=False,
                                     loss_type="difference_logits_ratio"),
        SquareAttack(c, eps=EPS, max_iter=20, nb_restarts=1, verbose=False)]), np.inf, EPS),
    "cw_l2": (lambda c: CarliniL2Method(c, max_iter=5, binary_search_steps=1, learning_rate=0.1,
                                        initial_const=1.0, verbose=False), None, None),
    "deepfool": (lambda c: DeepFool(c, max_iter=10, verbose=False), None, None),
    "square": (lambda c: SquareAttack(c, eps=EPS, max_iter=50, nb_restarts=1, verbose=False), np.inf, EPS),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ATTACKS))
def test_art_attack_runs_unchanged_and_lowers_accuracy(clf, xy, name):
    make, norm, eps = ATTACKS[name]
    x, y = xy
    assert clf.sample_mode == "fixed"
    clean = _acc(clf, x, y)
    x_adv = make(clf).generate(x=x, y=np.eye(10, dtype=np.float32)[y])
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0  # clip_values respected
    if norm is not None:
        assert np.abs(x_adv - x).max() <= eps + 1e-5
    else:  # minimal-perturbation attacks: no budget, but they must move (some) inputs
        assert np.abs(x_adv - x).max() > 0
    assert _acc(clf, x_adv, y) < clean


def test_forward_is_log_of_mean_member_probability(clf, trained_digits, xy):
    x, _ = xy
    ens = trained_digits.ensemble(10, seed=0)
    probs = torch.softmax(torch.from_numpy(clf.predict(x)), -1)
    torch.testing.assert_close(probs, ens.predict_proba(x), rtol=1e-4, atol=1e-5)
    assert clf.predict(x).max() <= 0  # log-probabilities: logits to ART, never probabilities


def test_fixed_fresh_and_resample(trained_digits, xy):
    x, _ = xy
    c = HyperGANClassifier(trained_digits, device_type="cpu", members=5, seed=3)
    a, b = c.predict(x), c.predict(x)
    np.testing.assert_array_equal(a, b)  # fixed bank: deterministic
    c.sample_mode = "fresh"
    f1, f2 = c.predict(x), c.predict(x)
    assert not np.allclose(f1, f2)  # new weights per call
    c.resample(3)
    np.testing.assert_array_equal(c.predict(x), f1)  # the fresh stream restarts from the seed
    c.sample_mode = "fixed"
    c.resample(4)
    assert not np.allclose(c.predict(x), a)
    c.resample(3)
    np.testing.assert_array_equal(c.predict(x), a)


def test_get_activations_on_named_layers(clf, xy):
    x, _ = xy
    assert clf.layer_names == ["member_logits", "logits"]
    members = clf.get_activations(x, "member_logits", batch_size=16)
    assert members.shape == (N, clf.members * 10)  # flattened [B, K * C]: ART's detectors need 2-D
    ref = clf.ensemble().member_logits(torch.from_numpy(x)).transpose(0, 1).numpy()
    np.testing.assert_allclose(members.reshape(N, clf.members, 10), ref, rtol=1e-5, atol=1e-6)
    framework = clf.get_activations(x[:4], 0, framework=True)
    assert isinstance(framework, torch.Tensor) and tuple(framework.shape) == (4, clf.members * 10)
    np.testing.assert_allclose(clf.get_activations(x, 1), clf.predict(x), rtol=1e-5, atol=1e-6)
    for layer in clf.layer_names:  # every listed layer gives what activation-based detectors accept
        assert clf.get_activations(x[:3], layer).ndim == 2, layer
    with pytest.raises(HgdefendError, match="layer: expected one of"):
        clf.get_activations(x, "conv1")


def test_art_subset_scanning_detector_runs_on_member_logits(trained_digits, digits):
    from art.defences.detector.evasion import SubsetScanningDetector

    small = HyperGANClassifier(trained_digits, clip_values=(0.0, 1.0), device_type="cpu", members=3, seed=0)
    background = digits.calib.x[:30].numpy()
    det = SubsetScanningDetector(small, background, layer="member_logits", verbose=False)
    noise = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    x = np.concatenate([digits.test.x[:3].numpy(), noise])
    report, is_adv = det.detect(x)
    assert report["scores"].shape == (6,) and np.all(np.isfinite(report["scores"]))
    assert is_adv.shape == (6,) and is_adv.dtype == bool
    clean_scores, adv_scores, power = det.scan(x[:3], noise)
    assert clean_scores.shape == (3,) and adv_scores.shape == (3,) and 0 <= power <= 1


def test_clone_for_refitting_and_fit_use_hypergan_training(digits, clf):
    clone = clf.clone_for_refitting()
    assert type(clone) is HyperGANClassifier and clone.hypergan is not clf.hypergan
    params, cloned = clf.get_params(), clone.get_params()
    for key in ("members", "sample_mode", "seed", "nb_classes", "input_shape"):
        assert cloned[key] == params[key]
    np.testing.assert_array_equal(cloned["clip_values"], params["clip_values"])
    x, y = digits.train.x.numpy(), digits.train.y.numpy()
    xt, yt = digits.test.x.numpy(), digits.test.y.numpy()
    before = _acc(clone, xt, yt)  # re-initialised: near chance
    clone.fit(x, y, config=TrainConfig(steps=150, nets_per_step=8, batch_size=64, pretrain_max_steps=50))
    assert clone.training_result_.mixer_pretrain  # the HyperGAN objective ran (mixer pre-training)
    assert clone.training_result_.steps == 150
    assert _acc(clone, xt, yt) > max(0.6, before + 0.3)
    with pytest.raises(HgdefendError, match="scheduler"):
        clone.fit(x, y, scheduler=object())


def test_deepcopy_and_pickle_stay_in_memory(clf, xy, tmp_path, monkeypatch):
    from art import config

    monkeypatch.setattr(config, "ART_DATA_PATH", str(tmp_path))
    x, _ = xy
    twin = copy.deepcopy(clf)
    np.testing.assert_array_equal(twin.predict(x), clf.predict(x))
    assert list(tmp_path.iterdir()) == []  # ART's own __getstate__ would have written model files


# --------------------------------------------------------------------------- bad input
def test_float64_converted_and_bad_shapes_rejected(clf, xy):
    x, y = xy
    np.testing.assert_array_equal(clf.predict(x.astype(np.float64)), clf.predict(x))
    g64 = clf.loss_gradient(x.astype(np.float64), y)
    assert g64.dtype == np.float32
    with pytest.raises(HgdefendError, match=r"x: expected shape \[B, 1, 8, 8\].*single example"):
        clf.predict(x[0])
    with pytest.raises(HgdefendError, match="channels-last"):
        clf.predict(np.transpose(x, (0, 2, 3, 1)))
    with pytest.raises(HgdefendError, match="x: expected floating-point"):
        clf.predict((x * 16).astype(np.int64))


def test_labels_converted_or_rejected(clf, xy):
    x, y = xy
    onehot = np.eye(10, dtype=np.float32)[y]
    # ART 1.20's loss_gradient raises on index labels; here they are converted to one-hot.
    np.testing.assert_allclose(clf.loss_gradient(x, y), clf.loss_gradient(x, onehot), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(clf.loss_gradient(x, y.astype(np.int32)), clf.loss_gradient(x, onehot),
                               rtol=1e-5, atol=1e-7)  # fmt: skip
    with pytest.raises(HgdefendError, match="y: rows must be one-hot.*logits"):
        clf.loss_gradient(x, clf.predict(x))  # model outputs passed as labels
    with pytest.raises(HgdefendError, match=r"y: class indices must lie in \[0, 9\]"):
        clf.loss_gradient(x, y + 10)
    with pytest.raises(HgdefendError, match="y: expected 40 labels"):
        clf.loss_gradient(x, y[:-1])
    with pytest.raises(HgdefendError, match="non-integer"):
        clf.compute_loss(x, y + 0.5)


def test_probability_outputs_rejected_and_constructor_checks(trained_digits):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1))
    hg = HyperGAN(ModuleTarget(net, (1, 8, 8)), noise_dim=8, code_dim=8, hidden=16)
    with pytest.raises(HgdefendError, match="outputs probabilities.*remove the final softmax"):
        HyperGANClassifier(hg, device_type="cpu")
    with pytest.raises(HgdefendError, match="input_shape"):
        HyperGANClassifier(trained_digits, nn.CrossEntropyLoss(), (1, 28, 28), 10, device_type="cpu")
    with pytest.raises(HgdefendError, match="nb_classes"):
        HyperGANClassifier(trained_digits, nn.CrossEntropyLoss(), (1, 8, 8), 5, device_type="cpu")
    with pytest.raises(HgdefendError, match="sample_mode"):
        HyperGANClassifier(trained_digits, device_type="cpu", sample_mode="sometimes")
    with pytest.raises(HgdefendError, match="model: expected a trained"):
        HyperGANClassifier(nn.Linear(64, 10), device_type="cpu")


# --------------------------------------------------------------------------- the detector
@pytest.fixture(scope="module")
def detector(clf, digits):
    return EntropyEvasionDetector(clf, target_fpr=0.1).fit(digits.calib.x.numpy())


def test_detector_clean_rate_near_target_and_flags_early_stopped_fgsm(clf, detector, digits):
    xt, yt = digits.test.x.numpy(), digits.test.y.numpy()
    report, flagged = detector.detect(xt)
    assert set(report) >= {"scores", "threshold", "score", "target_fpr"}
    assert report["scores"].shape == (len(xt),) and flagged.dtype == bool
    np.testing.assert_array_equal(flagged, report["scores"] > report["threshold"])
    clean_rate = float(flagged.mean())
    assert abs(clean_rate - 0.1) <= 0.06, clean_rate  # conformal threshold: ~target on held-out data
    # Early stopping: ART's minimal FGSM grows eps per input only until the prediction flips.
    x, y = xt[:N], yt[:N]
    fgsm = FastGradientMethod(clf, eps=0.5, eps_step=0.02, minimal=True)
    x_adv = fgsm.generate(x=x, y=np.eye(10, dtype=np.float32)[y])
    fooled = clf.predict(x_adv).argmax(1) != y
    assert fooled.sum() >= N // 2
    _, adv_flags = detector.detect(x_adv[fooled])
    assert adv_flags.mean() > clean_rate + 0.2


def test_detector_errors(clf, digits, trained_digits):
    fresh = EntropyEvasionDetector(clf)
    with pytest.raises(HgdefendError, match="call fit"):
        fresh.detect(digits.test.x.numpy())
    with pytest.raises(HgdefendError, match="target_fpr"):
        EntropyEvasionDetector(clf, target_fpr=1.5)
    with pytest.raises(
        HgdefendError, match=r"x_calib: input 0 \(\d+ in all\) has NaN or infinite values or outside"
    ):
        fresh.fit(digits.calib.x.numpy() * 255)
    with pytest.raises(HgdefendError, match="invalid: expected one of"):
        EntropyEvasionDetector(clf, invalid="ignore")
    other = HyperGANClassifier(trained_digits, device_type="cpu", members=3)
    det = EntropyEvasionDetector(other).fit(digits.calib.x.numpy())
    other.resample(7)
    with pytest.raises(HgdefendError, match="resampled after fit"):
        det.detect(digits.test.x.numpy())


def test_detector_classifier_matches_detector_and_art_attacks_drive_it(clf, detector, digits, xy):
    combined = detector_classifier(clf, detector)
    assert combined.nb_classes == 11
    x, y = xy
    fgsm_adv = FastGradientMethod(clf, eps=EPS).generate(x=x, y=np.eye(10, dtype=np.float32)[y])
    both = np.concatenate([digits.test.x.numpy(), fgsm_adv])
    pred = combined.predict(both).argmax(1)
    _, flagged = detector.detect(both)
    np.testing.assert_array_equal(pred == 10, flagged)  # argmax "adversarial" <=> the detector flags
    np.testing.assert_array_equal(pred[~flagged], clf.predict(both).argmax(1)[~flagged])
    # ART's PGD, unchanged, moves inputs through the detector term: targeted at the "adversarial" class
    # it raises the flag rate, targeted at a wrong class on the combined model it must also stay unflagged.
    pgd = ProjectedGradientDescent(
        combined, eps=EPS, eps_step=0.05, max_iter=10, targeted=True, verbose=False
    )
    x_flag = pgd.generate(x=x, y=np.full(N, 10))
    assert detector.detect(x_flag)[1].mean() > detector.detect(x)[1].mean() + 0.3
    wrong = (y + 1) % 10
    x_evade = pgd.generate(x=x, y=wrong)
    hit = combined.predict(x_evade).argmax(1) == wrong
    assert hit.any()
    assert not detector.detect(x_evade[hit])[1].any()


def test_detector_with_defaults_fails_closed_per_input(trained_digits, digits):
    """No clip_values given: the classifier takes the data's [0, 1], and the detector flags 0–255,
    ×1.3, NaN and ±inf inputs one by one (score NaN) while the valid ones in the same batch are
    scored as usual; ``invalid="error"`` refuses the batch naming the first bad input."""
    clf = HyperGANClassifier(trained_digits, device_type="cpu", members=10)
    assert tuple(float(v) for v in clf.clip_values) == (0.0, 1.0)
    det = EntropyEvasionDetector(clf).fit(digits.calib.x.numpy())
    x = digits.test.x[:8].numpy().copy()
    base_report, base = det.detect(x)
    bad = x.copy()
    bad[1] *= 255
    bad[2] = np.clip(bad[2] * 1.3 + 0.05, 0, None)
    bad[3].flat[0] = np.nan
    bad[4].flat[5] = -np.inf
    report, flagged = det.detect(bad)
    assert flagged[1:5].all() and not report["input_valid"][1:5].any()
    assert np.isnan(report["scores"][1:5]).all()
    keep = [0, 5, 6, 7]
    np.testing.assert_array_equal(flagged[keep], base[keep])
    np.testing.assert_allclose(report["scores"][keep], base_report["scores"][keep], rtol=1e-5)
    strict = EntropyEvasionDetector(clf, invalid="error").fit(digits.calib.x.numpy())
    with pytest.raises(HgdefendError, match=r"x: input 1 \(4 in all\)"):
        strict.detect(bad)
