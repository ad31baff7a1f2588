"""Model sizes as one TrainConfig mapping (issue 23): flat `size.NAME` keys for Tune and MLflow, the bare names
of studies and checkpoints written before still read, and names and values checked against the model's
ModelSpec when the config is resolved (never by TrainConfig, which imports no model)."""
import dataclasses

import pytest
import torch

from dcnn.config import LEGACY_SIZE_NAMES, SIZE_PREFIX, TrainConfig
from dcnn.registry import resolve_config


def test_legacy_bare_size_keys_map_into_sizes():
    """A study's `fixed: {hidden: 32}`, a Tune config of an old study (every size key, None where the model has
    none) and an old checkpoint's config all hold bare size names: they become sizes; None is the preset's."""
    old = {**{n: None for n in LEGACY_SIZE_NAMES}, "model": "schnet", "hidden": 32.0, "cutoff": 5}
    cfg = TrainConfig.from_dict(old)
    assert cfg.sizes == {"hidden": 32.0, "cutoff": 5} and cfg.model_sizes() == cfg.sizes
    assert resolve_config(cfg).sizes == {"hidden": 32, "cutoff": 5.0}  # the types of the preset's values
    assert TrainConfig.from_dict({"model": "schnet", "hidden": 32, "size.hidden": 32}).sizes == {"hidden": 32}
    with pytest.raises(ValueError, match=r"size 'hidden' is given twice with different values \(32 and "
                                         r"size.hidden=64\); give it once, as size.hidden"):
        TrainConfig.from_dict({"model": "schnet", "hidden": 32, "size.hidden": 64})
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['width'\]; known keys: .* and size.NAME"):
        TrainConfig.from_dict({"width": 3})
    assert TrainConfig.is_key("size.width") and TrainConfig.is_key("cutoff") and TrainConfig.is_key("lr")
    assert not TrainConfig.is_key("width") and not TrainConfig.is_key("sizes")


def test_to_dict_is_flat_and_round_trips():
    """to_dict: one scalar per key, each size as size.NAME (no nested mapping: Tune and MLflow want flat
    scalars); from_dict(to_dict()) is the same config, resolved or not."""
    cfg = TrainConfig(model="cgcnn", sizes={"readout": "sum", "cutoff": 5.0})
    flat = cfg.to_dict()
    assert flat["size.readout"] == "sum" and flat["size.cutoff"] == 5.0 and "sizes" not in flat
    assert not any(isinstance(v, (dict, list)) for v in flat.values())
    assert TrainConfig.from_dict(flat) == cfg
    resolved = resolve_config(flat)
    assert TrainConfig.from_dict(resolved.to_dict()) == resolved and resolved.resolved
    assert "size.hidden" not in TrainConfig().to_dict()  # no size set: the preset's, no key
    assert not dataclasses.replace(resolved, lr=1e-4).resolved  # a changed copy is resolved again


def test_sizes_are_checked_by_the_models_spec():
    """Which names apply, and which values, is the model's spec's to say: refusals name the model and its
    sizes; values take the type of the preset's (numpy scalars and YAML strings too)."""
    np = pytest.importorskip("numpy")
    with pytest.raises(ValueError, match=r"size field\(s\) \['filters'\] do not apply to model 'fcn'; its sizes "
                                         r"are: hidden, hidden_layers, batchnorm"):
        resolve_config(TrainConfig(model="fcn", sizes={"filters": 64}))
    with pytest.raises(ValueError, match=r"size cutoff=-1.0 must be positive \(model 'schnet'\)"):
        resolve_config(TrainConfig(sizes={"cutoff": -1}))
    with pytest.raises(ValueError, match=r"size readout='max' is not allowed for model 'cgcnn'; choose one of: "
                                         r"mean, sum"):
        resolve_config(TrainConfig(model="cgcnn", sizes={"readout": "max"}))
    with pytest.raises(ValueError, match=r"size hidden=2.5 is not a valid int"):
        resolve_config(TrainConfig(sizes={"hidden": 2.5}))
    with pytest.raises(ValueError, match=r"size name 'a b' is not a parameter name"):
        TrainConfig(sizes={"a b": 1})
    cfg = resolve_config(TrainConfig(model="fcn", sizes={"hidden": np.int64(16), "batchnorm": "false"}))
    assert cfg.sizes == {"hidden": 16, "batchnorm": False} and type(cfg.sizes["hidden"]) is int
    # a build keyword no preset lists is a size too (DimeNet++'s envelope exponent); the activation never is
    assert resolve_config(TrainConfig(model="dimenetpp", sizes={"envelope_exponent": 6})).sizes == {"envelope_exponent": 6}
    with pytest.raises(ValueError, match=r"size field\(s\) \['activation'\] do not apply"):
        resolve_config(TrainConfig(sizes={"activation": "relu"}))


def test_an_old_checkpoint_with_bare_size_keys_still_loads_and_resumes(tmp_path):
    """A checkpoint written before sizes were one mapping stores its config with every size as a field of its
    own (None where unset): the calculator rebuilds its model with those sizes, and --resume compares it with
    today's config size by size."""
    from dcnn.calculator import load_potential
    from dcnn.cli import build_parser, check_resume_config, config_from_args
    from dcnn.train import Trainer

    settings = dict(model="schnet", dataset="catalysis", n_train=20, n_val=10, n_test=10, epochs=2, compile="off")
    trainer = Trainer(TrainConfig(**settings, sizes={"hidden": 16, "cutoff": 4.0}))
    path = tmp_path / "trainer.pt"
    trainer.save(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    legacy = {k: v for k, v in state["config"].items() if not k.startswith(SIZE_PREFIX)}
    legacy.update({n: None for n in LEGACY_SIZE_NAMES}, hidden=16, cutoff=4.0)
    state["config"] = legacy
    torch.save(state, path)

    model, _, _, cutoff = load_potential(path)
    assert model.embedding.embedding_dim == 16 and cutoff == 4.0
    flags = ["train", "--model", "schnet", "--dataset", "catalysis", "--n-train", "20", "--n-val", "10",
             "--n-test", "10", "--epochs", "3", "--compile", "off", "--hidden", "16", "--cutoff", "4"]
    check_resume_config(state, config_from_args(build_parser().parse_args(flags)), path)  # the same run
    other = config_from_args(build_parser().parse_args(flags[:-2] + ["--size", "cutoff=5"]))
    with pytest.raises(ValueError, match=r"different run \(size.cutoff: 4.0 → 5.0\)"):
        check_resume_config(state, other, path)


def test_cli_size_flags_and_conflicts():
    """`--cutoff 5` for a built-in size, `--size NAME=VALUE` for any; the same size given twice differently
    is refused naming both."""
    from dcnn.cli import build_parser, config_from_args

    parse = build_parser().parse_args
    assert config_from_args(parse(["train", "--model", "cgcnn", "--readout", "sum", "--cutoff", "5"])).sizes == \
        {"readout": "sum", "cutoff": 5.0}
    with pytest.raises(ValueError, match=r"--cutoff 5.0 contradicts --size cutoff=4: give one of them"):
        config_from_args(parse(["train", "--cutoff", "5", "--size", "cutoff=4"]))
    with pytest.raises(ValueError, match=r"--size 'cutoff': expected NAME=VALUE"):
        config_from_args(parse(["train", "--size", "cutoff"]))
