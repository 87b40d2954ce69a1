import pytest

from structseg.config import (
    Config,
    apply_override,
    config_from_dict,
    load_config,
    read_yaml,
    save_config,
)
from structseg.errors import ConfigError


def test_defaults_and_overrides():
    cfg = config_from_dict({"train": {"epochs": 3}}, ["optimizer.lr=0.5", "model.args.base_channels=16",
                                                        "augment.crop_size=[64, 80]", "data.val_split=null"])
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3 and cfg.optimizer.lr == 0.5
    assert cfg.model.args == {"base_channels": 16}
    assert cfg.augment.crop_size == [64, 80] and cfg.data.val_split is None
    assert cfg.train.batch_size == Config().train.batch_size


@pytest.mark.parametrize("data, message", [
    ({"train": {"epoch": 3}}, "unknown config key 'train.epoch'"),
    ({"trian": {}}, "unknown config key 'trian'"),
    ({"train": {"epochs": "ten"}}, "'train.epochs': expected int, got 'ten'"),
    ({"optimizer": {"lr": True}}, "'optimizer.lr': expected float"),
    ({"optimizer": {"name": "adam"}}, "'optimizer.name': 'adam' is not one of sgd, adamw, rmsprop"),
    ({"augment": {"crop_size": [64, "x"]}}, "augment.crop_size"),
    ({"train": 5}, "section 'train': expected a mapping"),
])
def test_invalid_configs_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_override_unknown_key_and_bad_syntax():
    with pytest.raises(ConfigError, match="unknown config key 'train.epochz'"):
        config_from_dict({}, ["train.epochz=3"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override({}, "train.epochs")


def test_yaml_round_trip_and_file_errors(tmp_path):
    cfg = config_from_dict({"model": {"name": "fcn8s"}, "train": {"class_weights": [1.0, 2.0]}})
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    (tmp_path / "bad.yaml").write_text("model: {name: unet\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "unk.yaml").write_text("model: {nmae: unet}\n")
    with pytest.raises(ConfigError, match=r"unk.yaml: unknown config key 'model.nmae'"):
        load_config(tmp_path / "unk.yaml")
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_parse():
    from pathlib import Path
    configs = sorted(Path(__file__).resolve().parents[1].glob("configs/**/*.yaml"))
    assert configs
    import torch

    from structseg.models import create_model
    from structseg.workflows.dae import load_dae_config
    for path in configs:
        if "dae_dict" in read_yaml(path):  # a DAE recipe (structseg dae train), not a segmenter's
            load_dae_config(path)  # validates too
            continue
        cfg = load_config(path)
        with torch.device("meta"):  # the model each recipe names builds with its arguments
            create_model(cfg.model.name, 11, **cfg.model.args)
        if path.name.startswith("weak"):  # a weak recipe names its tags file: without it, it would train on labels
            assert cfg.weak.tags, f"{path} sets no weak.tags"
