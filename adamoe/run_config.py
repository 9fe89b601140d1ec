"""`FinetuneConfig`: everything one fine-tuning run needs, as the YAML files in `configs/` and `run_config.json`.

A run config has four concerns, each its own dataclass or mapping: the task and model, `moe` (a `MoEConfig`;
`null` trains the dense baseline), `data` (the task's `DataArgs`) and `training` (fields of
`AdaMoETrainingArguments`, i.e. transformers' `TrainingArguments` plus `curriculum` and `target_loss`).
Unknown keys at any level are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import MoEConfig
from .tasks import DataArgs, get_task
from .trainer import AdaMoESeq2SeqTrainingArguments


class RunConfigError(ValueError):
    """A run config (YAML file or flags) names an unknown field or an impossible combination."""


def _training_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(AdaMoESeq2SeqTrainingArguments)}


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run needs; serialises into the output directory as `run_config.json`.

    Attributes:
        task: a key of `adamoe.tasks.TASKS`.
        model: Hub id or local folder (dense, or an adamoe checkpoint); None takes the task's default model.
        moe: how FFNs become MoE blocks; None trains the unpatched model (the paper's Dense baseline).
        data: where the task's data comes from and how it is cut.
        training: `AdaMoETrainingArguments` fields (`num_train_epochs`, `learning_rate`, `curriculum`, ...).
        output_dir: where checkpoints and results go; None gives `outputs/<task>-<gating>`.
        overwrite: replace an output directory that holds another run.
        resume: continue the run in `output_dir` from its last checkpoint.
    """

    task: str
    model: str | None = None
    moe: MoEConfig | None = field(default_factory=MoEConfig)
    data: DataArgs = field(default_factory=DataArgs)
    training: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        task = get_task(self.task)  # unknown task: KeyError naming the registered ones
        unknown = sorted(set(self.training) - _training_fields())
        if unknown:
            raise RunConfigError(
                f"Unknown training field(s) {unknown}: the 'training' section takes TrainingArguments fields "
                "(e.g. num_train_epochs, learning_rate, per_device_train_batch_size) plus curriculum and target_loss."
            )
        if "output_dir" in self.training:
            raise RunConfigError("Give output_dir at the top level of the run config, not under 'training'.")
        if self.overwrite and self.resume:
            raise RunConfigError("--resume continues the run in the output directory; --overwrite replaces it.")
        self.model = self.model or task.default_model
        self.output_dir = self.output_dir or f"outputs/{self.task}-{self.gating}"

    @property
    def gating(self) -> str:
        return "dense" if self.moe is None else self.moe.gating

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "model": self.model,
            "moe": None if self.moe is None else self.moe.to_dict(),
            "data": dataclasses.asdict(self.data),
            "training": dict(self.training),
            "output_dir": self.output_dir,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], **overrides: Any) -> FinetuneConfig:
        """Build from nested sections (`moe`, `data`, `training`) as in the YAML files; unknown keys are errors."""
        values = {**values, **overrides}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RunConfigError(f"Unknown run-config key(s) {unknown}; the top level takes {sorted(known)}.")
        moe = values.get("moe", {})
        if isinstance(moe, dict):
            moe = MoEConfig.from_dict(moe)
        data = values.get("data", {})
        if isinstance(data, dict):
            data_fields = {f.name for f in dataclasses.fields(DataArgs)}
            bad = sorted(set(data) - data_fields)
            if bad:
                raise RunConfigError(f"Unknown data field(s) {bad}; 'data' takes {sorted(data_fields)}.")
            data = DataArgs(**data)
        return cls(**{**values, "moe": moe, "data": data, "training": dict(values.get("training") or {})})

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> FinetuneConfig:
        """Read a run-config YAML file (a path, or a packaged config's name such as "sst2")."""
        path = resolve_config_path(path)
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise RunConfigError(f"{path} must hold a mapping of run-config sections, got {type(values).__name__}.")
        try:
            return cls.from_dict(values, **overrides)
        except (RunConfigError, ValueError, KeyError) as err:  # KeyError: an unknown task, naming the known ones
            raise RunConfigError(f"{path}: {err.args[0] if isinstance(err, KeyError) else err}") from err


PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A run-config file: a path, or the name of a packaged paper config (`sst2` -> configs/sst2.yaml)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    packaged = PACKAGED_CONFIGS / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and path.parent == Path(".") and packaged.exists():
        return packaged
    names = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    raise FileNotFoundError(f"No run config {name_or_path!r}: give a YAML path or one of the packaged {names}.")
