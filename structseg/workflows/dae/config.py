"""The DAE run's config in the seed's vocabulary: ``data``, ``dae_dict``, ``train_dict``, ``data_augmentation``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ...config import AmpMode, check_choices, dataclass_from_dict, read_yaml
from ...errors import ConfigError
from ...structured.dae import DAEConfig


@dataclass
class TrainDict:
    """The seed's ``train_dict``. ``weight_decay`` is listed in the released configs but never added to the
    loss there, so it applies only with ``use_weight_decay: true`` (default false, as the code ran)."""

    learning_rate: float = 0.001
    lr_anneal: float = 0.99
    weight_decay: float = 0.0001
    use_weight_decay: bool = False
    num_epochs: int = 500
    max_patience: int = 100
    optimizer: Literal["rmsprop", "adam", "sgd"] = "rmsprop"
    batch_size: list[int] = field(default_factory=lambda: [10, 10, 10])  # train, validation, test
    training_loss: list[Literal["crossentropy", "squared_error"]] = field(
        default_factory=lambda: ["crossentropy", "squared_error"])
    lmb: float = 1.0
    full_im_ft: bool = False  # fine-tune on full images instead of crops
    amp: AmpMode = "auto"  # not in the seed: autocast for the segmenter and the DAE


@dataclass
class DataAugmentation:
    """The seed's ``data_augmentation``: random crops (padded with void), horizontal flips."""

    crop_size: list[int] | None = field(default_factory=lambda: [224, 224])
    horizontal_flip: float = 0.5
    fill_mode: Literal["constant"] = "constant"  # void padding; the seed's other modes are not supported


@dataclass
class DAEData:
    root: str = ""
    train_split: str = "train.txt"
    val_split: str = "val.txt"


@dataclass
class DAERunConfig:
    data: DAEData = field(default_factory=DAEData)
    dae_dict: DAEConfig = field(default_factory=DAEConfig)
    train_dict: TrainDict = field(default_factory=TrainDict)
    data_augmentation: DataAugmentation = field(default_factory=DataAugmentation)
    segmenter_layers: dict[str, str] = field(default_factory=dict)  # e.g. {pool4: backbone.features.23}
    seed: int = 0
    threads: int = 0

    def validate(self) -> None:
        check_choices(self)
        t, a = self.train_dict, self.data_augmentation
        checks = [
            ("crossentropy" in t.training_loss,
             f"train_dict.training_loss {t.training_loss}: expected [crossentropy] or [crossentropy, squared_error]"),
            (len(t.batch_size) == 3 and all(b >= 1 for b in t.batch_size),
             f"train_dict.batch_size {t.batch_size}: expected [train, validation, test], each >= 1"),
            (t.num_epochs >= 1 and t.max_patience >= 1 and t.learning_rate > 0 and 0 < t.lr_anneal <= 1,
             "train_dict: num_epochs and max_patience >= 1, learning_rate > 0, lr_anneal in (0, 1]"),
            (a.horizontal_flip in (0, 0.5), f"data_augmentation.horizontal_flip {a.horizontal_flip}: 0 or 0.5"),
            (bool(self.data.root), "data.root: the dataset folder is required"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        try:
            self.dae_dict.validate()
        except ValueError as e:
            raise ConfigError(f"dae_dict: {e}") from None


def load_dae_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DAERunConfig:
    data = read_yaml(path, "DAE config")
    try:
        cfg = dataclass_from_dict(DAERunConfig, data, overrides)
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg
