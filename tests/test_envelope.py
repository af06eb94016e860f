"""The verified envelope of model files and checkpoints: every header field that changes behaviour
is covered by the digest and checked against a schema before anything is built (issue 17)."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hgdefend import HyperGAN, TrainConfig, Trainer, load_model, save_model
from hgdefend.envelope import content_sha256, tensors_sha256
from hgdefend.io import ModelFileError, load_checkpoint, upgrade_model_file
from hgdefend.resources import ResourceLimitError
from hgdefend.targets import digits_small


def _small(seed=0):
    torch.manual_seed(seed)
    return HyperGAN(digits_small(), noise_dim=16, code_dim=8, hidden=32)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, _small(), dataset={"name": "digits", "classes": list(range(10))}, training={"steps": 3})
    return path


def _read(path):
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def _rewrite(path, out, edit, *, rehash=False, raw_config=None):
    """Edit the JSON config of ``path`` into ``out``; ``rehash`` recomputes the digest (an attacker
    who can rewrite the file can), so what is left to refuse it is the schema."""
    meta, tensors = _read(path)
    config = json.loads(meta["hgdefend_config"])
    edit(config)
    meta["hgdefend_config"] = raw_config if raw_config is not None else json.dumps(config)
    if rehash:
        meta["content_sha256"] = content_sha256(config, tensors)
    save_file(tensors, str(out), meta)
    return out


def _set(*keys, value):
    def edit(config):
        node = config
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return edit


def test_same_model_saves_byte_identical_files(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert save_model(a, _small(), training={"steps": 1}) == save_model(b, _small(), training={"steps": 1})
    assert a.read_bytes() == b.read_bytes()


def test_edited_activation_parameter_is_refused(model_file, tmp_path):
    in_range = _set("target", "layers", 1, "negative_slope", value=0.5)
    with pytest.raises(ModelFileError, match="integrity"):
        load_model(_rewrite(model_file, tmp_path / "x.safetensors", in_range))
    edit = _set("target", "layers", 1, "negative_slope", value=-50.0)
    with pytest.raises(
        ModelFileError, match=r"layers\[1\]\.negative_slope: expected a finite number in \[0, 1\]"
    ):
        load_model(_rewrite(model_file, tmp_path / "z.safetensors", edit))
    with pytest.raises(ModelFileError, match=r"layers\[1\]\.negative_slope"):
        load_model(_rewrite(model_file, tmp_path / "y.safetensors", edit, rehash=True))


def test_edited_class_labels_are_refused(model_file, tmp_path):
    edit = _set("dataset", "classes", value=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    with pytest.raises(ModelFileError, match="integrity"):
        load_model(_rewrite(model_file, tmp_path / "x.safetensors", edit))
    for bad, message in (([0, 0, 1], "distinct"), ([0, 1], "2 labels"), (["=1+1"] * 10, "integer")):
        out = _rewrite(
            model_file, tmp_path / "y.safetensors", _set("dataset", "classes", value=bad), rehash=True
        )
        with pytest.raises(ModelFileError, match=message):
            load_model(out)


def test_edited_training_recipe_is_refused(model_file, tmp_path):
    with pytest.raises(ModelFileError, match="integrity"):
        load_model(_rewrite(model_file, tmp_path / "x.safetensors", _set("training", "steps", value=99)))


def test_config_of_wrong_json_type_is_refused(model_file, tmp_path):
    for raw in ("[1, 2]", '"text"', "17", "null"):
        with pytest.raises(ModelFileError, match="expected a JSON object"):
            load_model(_rewrite(model_file, tmp_path / "x.safetensors", lambda c: None, raw_config=raw))
    out = _rewrite(
        model_file, tmp_path / "y.safetensors", _set("hypergan", "hidden", value="32"), rehash=True
    )
    with pytest.raises(ModelFileError, match=r"hypergan\.hidden: expected an integer"):
        load_model(out)


def test_config_missing_keys_is_refused(model_file, tmp_path):
    for keys in (("target",), ("hypergan", "noise_dim"), ("target", "layers")):

        def edit(config, keys=keys):
            node = config
            for k in keys[:-1]:
                node = node[k]
            del node[keys[-1]]

        with pytest.raises(ModelFileError, match="missing key"):
            load_model(_rewrite(model_file, tmp_path / "x.safetensors", edit, rehash=True))


def test_deeply_nested_config_is_refused(model_file, tmp_path):
    raw = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ModelFileError, match="nested deeper"):
        load_model(_rewrite(model_file, tmp_path / "x.safetensors", lambda c: None, raw_config=raw))
    raw = '{"a": ' * 30 + "1" + "}" * 30
    with pytest.raises(ModelFileError, match="nested deeper"):
        load_model(_rewrite(model_file, tmp_path / "y.safetensors", lambda c: None, raw_config=raw))
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(_rewrite(model_file, tmp_path / "z.safetensors", lambda c: None, raw_config='{"a": NaN}'))


def test_header_declaring_huge_generator_is_refused_before_allocation(model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HGDEFEND_MAX_MEMORY", "1G")
    out = _rewrite(
        model_file, tmp_path / "x.safetensors", _set("hypergan", "hidden", value=1 << 20), rehash=True
    )
    with pytest.raises(
        ResourceLimitError, match=r"needs about .* GiB, more than the memory limit of 1\.0 GiB"
    ):
        load_model(out)
    monkeypatch.setenv("HGDEFEND_MAX_MEMORY", "1T")  # within the limit: the file's shapes refuse it
    with pytest.raises(ModelFileError, match="shape"):
        load_model(out)
    out = _rewrite(
        model_file, tmp_path / "y.safetensors", _set("hypergan", "hidden", value=1 << 30), rehash=True
    )
    with pytest.raises(ModelFileError, match=r"hypergan\.hidden: expected an integer in"):
        load_model(out)


def test_unknown_header_key_is_refused(model_file, tmp_path):
    meta, tensors = _read(model_file)
    save_file(tensors, str(tmp_path / "x.safetensors"), {**meta, "input_range": "[-1e9, 1e9]"})
    with pytest.raises(ModelFileError, match="unexpected header keys"):
        load_model(tmp_path / "x.safetensors")


def test_format_1_file_is_refused_with_a_retrain_hint_and_can_be_upgraded(model_file, tmp_path):
    meta, tensors = _read(model_file)
    config = json.loads(meta["hgdefend_config"])
    config["format_version"] = 1
    config["training"]["seconds"] = 12.5
    old = {"format": "hgdefend-model", "format_version": "1", "hgdefend_config": json.dumps(config),
           "tensors_sha256": tensors_sha256(tensors)}  # fmt: skip
    save_file(tensors, str(tmp_path / "old.safetensors"), old)
    with pytest.raises(ModelFileError, match="format version '1'.*retrain it"):
        load_model(tmp_path / "old.safetensors")
    upgrade_model_file(tmp_path / "old.safetensors", tmp_path / "new.safetensors")
    loaded = load_model(tmp_path / "new.safetensors")
    assert "seconds" not in loaded.config["training"]
    assert (tmp_path / "new.safetensors").read_bytes() == model_file.read_bytes()


# --------------------------------------------------------------------------- checkpoints
_CFG = dict(steps=4, nets_per_step=2, batch_size=16, pretrain_max_steps=2, checkpoint_every=2)


@pytest.fixture
def checkpoint(tmp_path, digits):
    ckpt = tmp_path / "c.safetensors"
    Trainer(_small(), digits.train, TrainConfig(**_CFG), progress=False, device="cpu", checkpoint=ckpt).fit()
    return ckpt


def _resume(ckpt, digits):
    t = Trainer(_small(1), digits.train, TrainConfig(**_CFG), progress=False, device="cpu", checkpoint=ckpt)
    return load_checkpoint(ckpt, t.hg, t.optimizers, t.schedulers)


def test_checkpoint_round_trip(checkpoint, digits):
    assert _resume(checkpoint, digits)["step"] == 4


def test_tampered_checkpoint_step_is_refused(checkpoint, tmp_path, digits):
    out = _rewrite(checkpoint, tmp_path / "x.safetensors", _set("state", "step", value=2))
    with pytest.raises(ModelFileError, match="integrity"):
        _resume(out, digits)
    out = _rewrite(checkpoint, tmp_path / "y.safetensors", _set("state", "step", value=400), rehash=True)
    with pytest.raises(ModelFileError, match="past the run's 4 steps"):
        _resume(out, digits)


def test_negative_checkpoint_step_is_refused(checkpoint, tmp_path, digits):
    out = _rewrite(checkpoint, tmp_path / "x.safetensors", _set("state", "step", value=-1), rehash=True)
    with pytest.raises(ModelFileError, match=r"state\.step: expected an integer in \[0"):
        _resume(out, digits)


def test_checkpoint_learning_rate_1e9_is_refused(checkpoint, tmp_path, digits):
    def lr(value):
        def edit(config):
            config["optimizers"]["generator"][0]["lr"] = value

        return edit

    with pytest.raises(ModelFileError, match=r"\[0\]\.lr: expected a finite number"):
        _resume(_rewrite(checkpoint, tmp_path / "x.safetensors", lr(1e9)), digits)
    with pytest.raises(ModelFileError, match="integrity"):
        _resume(_rewrite(checkpoint, tmp_path / "y.safetensors", lr(0.5)), digits)
    with pytest.raises(ModelFileError, match=r"learning rate 0\.5 is outside"):
        _resume(_rewrite(checkpoint, tmp_path / "z.safetensors", lr(0.5), rehash=True), digits)


def test_checkpoint_with_nan_optimizer_state_is_refused(checkpoint, tmp_path, digits):
    meta, tensors = _read(checkpoint)
    key = next(k for k in tensors if k.endswith("exp_avg"))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    config = json.loads(meta["hgdefend_config"])
    meta["content_sha256"] = content_sha256(config, tensors)
    save_file(tensors, str(tmp_path / "x.safetensors"), meta)
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        _resume(tmp_path / "x.safetensors", digits)
