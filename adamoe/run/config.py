"""`FinetuneConfig`: everything one fine-tuning run needs, as the YAML files in `configs/` and `run_config.json`.

A run config has four concerns, each its own dataclass or mapping: the task and model, `moe` (a `MoEConfig`;
`null` trains the dense baseline), `data` (the task's `DataArgs`) and `training` (fields of
`AdaMoETrainingArguments`, i.e. transformers' `TrainingArguments` plus `curriculum` and `target_loss`).
Unknown keys at any level are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..files import is_secret_key
from ..moe.config import MoEConfig
from ..tasks import DataArgs, get_task


class RunConfigError(ValueError):
    """A run config (YAML file or flags) names an unknown field or an impossible combination."""


def _training_fields() -> dict[str, dataclasses.Field]:
    from ..trainer import AdaMoESeq2SeqTrainingArguments  # torch: only when a run config is built

    return {f.name: f for f in dataclasses.fields(AdaMoESeq2SeqTrainingArguments)}


# Each `adamoe finetune` flag and the run-config keys it sets, as (section, key), section None for a top-level key.
# The CLI builds its overrides from this one table (`flag_overrides`), and an error names the flag behind a key
# from it (`FLAGS`). The MoE flags build the `moe` section through `MoEConfig` (cli/_options.py).
FLAG_KEYS: dict[str, tuple[tuple[str | None, str], ...]] = {
    "--task": ((None, "task"),),
    "--model": ((None, "model"),),
    "--output-dir": ((None, "output_dir"),),
    "--keep-checkpoints": ((None, "keep_checkpoints"),),
    "--resume": ((None, "resume"),),
    "--overwrite": ((None, "overwrite"),),
    "--train-file": (("data", "train_file"),),
    "--validation-file": (("data", "validation_file"),),
    "--max-train-samples": (("data", "max_train_samples"),),
    "--max-eval-samples": (("data", "max_eval_samples"),),
    "--direction": (("data", "direction"),),
    "--skip-bad-examples": (("data", "skip_bad_examples"),),
    "--epochs": (("training", "num_train_epochs"),),
    "--max-steps": (("training", "max_steps"),),
    "--batch-size": (("training", "per_device_train_batch_size"), ("training", "per_device_eval_batch_size")),
    "--max-tokens": (("training", "max_tokens"),),
    "--lr": (("training", "learning_rate"),),
    "--bf16": (("training", "bf16"),),
    "--gradient-checkpointing": (("training", "gradient_checkpointing"),),
    "--gradient-accumulation-steps": (("training", "gradient_accumulation_steps"),),
    "--seed": (("training", "seed"),),
    "--curriculum": (("training", "curriculum"),),
    "--target-loss": (("training", "target_loss"),),
    "--hub-model-id": (("training", "hub_model_id"),),
    "--push-to-hub": (("training", "push_to_hub"),),
    "--report-to": (("training", "report_to"),),
    "--lora-r": (("lora", "r"),),
    "--lora-alpha": (("lora", "alpha"),),
    "--lora-targets": (("lora", "targets"),),
}
FLAGS = {key: flag for flag, keys in FLAG_KEYS.items() for _, key in keys}  # config key -> the flag that sets it


def flag_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The nested run-config override of the flags given (`None`: not given), through `FLAG_KEYS`.

    Example:
        ```python
        >>> flag_overrides({"--lr": 1e-4, "--task": "sst2", "--seed": None})
        {'task': 'sst2', 'training': {'learning_rate': 0.0001}}
        ```
    """
    overrides: dict[str, Any] = {}
    for flag, value in values.items():
        if value is None:
            continue
        for section, key in FLAG_KEYS[flag]:
            (overrides if section is None else overrides.setdefault(section, {}))[key] = value
    return overrides


# Lower bounds of the numeric fields a user sets most; `None` stays allowed where the field's default is None.
AT_LEAST_ONE = {
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "max_tokens",
    "max_train_samples", "max_eval_samples", "max_seq_length", "n_best_size", "max_answer_length",
    "max_source_length", "max_target_length", "num_beams", "no_repeat_ngram_size", "block_size",
    "preprocessing_num_workers",
    "save_total_limit", "generation_max_length", "generation_num_beams",
}  # fmt: skip
POSITIVE = {"learning_rate", "num_train_epochs", "logging_steps", "save_steps", "eval_steps", "alpha"}
NON_NEGATIVE = {"weight_decay", "warmup_steps", "warmup_ratio", "max_grad_norm", "doc_stride"}


def _numeric_kind(annotation: Any) -> type | None:
    """int or float for a field annotated as such (possibly `| None`); None for anything else."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    words = set(re.findall(r"[a-z]+", text))
    if words & {"str", "bool", "list", "dict"}:
        return None
    return float if "float" in words else int if "int" in words else None


def _checked_number(section: str, name: str, value: Any, kind: type) -> int | float:
    """`value` as a finite `kind`; a string such as "3e-5" (YAML 1.1 reads it as one) is parsed."""
    flag = f" ({FLAGS[name]})" if name in FLAGS else ""
    label = f"{section}.{name}"
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise RunConfigError(f"{label}{flag} must be a number, got {value!r}.")
    if not math.isfinite(number):
        raise RunConfigError(f"{label}{flag} must be a finite number, got {value!r}.")
    if kind is int:
        if float(number) != int(number):
            raise RunConfigError(f"{label}{flag} must be a whole number, got {value!r}.")
        number = int(number)
    else:
        number = float(number)
    if name in AT_LEAST_ONE and number < 1:
        raise RunConfigError(f"{label}{flag} must be at least 1, got {value!r}.")
    if name in POSITIVE and number <= 0:
        raise RunConfigError(f"{label}{flag} must be greater than 0, got {value!r}.")
    if name in NON_NEGATIVE and number < 0:
        raise RunConfigError(f"{label}{flag} must not be negative, got {value!r}.")
    if name == "max_steps" and number != -1 and number < 1:
        raise RunConfigError(
            f"{label}{flag} must be a positive number of optimizer steps (or -1: train for the epochs), "
            f"got {value!r}: a run of {value!r} steps would train nothing."
        )
    return number


def _is_bool_field(annotation: Any) -> bool:
    """Whether a field is annotated `bool` (possibly `| None`)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return set(re.findall(r"[A-Za-z]+", text)) - {"None", "Optional", "optional"} == {"bool"}


def checked_bool(label: str, value: Any) -> Any:
    """`value` if it is a boolean (or None); a string such as "false" is refused, not read as true."""
    if value is not None and not isinstance(value, bool):
        flag = f" ({FLAGS[label.rpartition('.')[2]]})" if label.rpartition(".")[2] in FLAGS else ""
        raise RunConfigError(f"{label}{flag} must be true or false, got {value!r}.")
    return value


def _checked_section(section: str, values: Any, fields: dict[str, dataclasses.Field]) -> dict[str, Any]:
    """The numeric values of a section as numbers of the right kind, checked against their bounds; booleans only
    as booleans."""
    checked = dict(values)
    for name, value in values.items():
        annotation = fields[name].type if name in fields else None
        if annotation is not None and _is_bool_field(annotation):
            checked_bool(f"{section}.{name}", value)
            continue
        kind = _numeric_kind(annotation) if annotation is not None else None
        if kind is not None and value is not None:
            checked[name] = _checked_number(section, name, value, kind)
    return checked


LORA_FIELDS = {"r": "the rank (>= 1)", "alpha": "LoRA's alpha (default 2 * r)", "targets": "what to adapt",
               "train_routers": "train the routers too (default: with adaptive gating)"}  # fmt: skip


def _checked_lora(values: Any) -> dict[str, Any]:
    """The `lora` section: r, alpha, targets (a list, or one comma-separated string), train_routers."""
    values = _mapping("lora", values, allow_none=False)
    unknown = sorted(set(values) - set(LORA_FIELDS))
    if unknown:
        raise RunConfigError(f"Unknown lora field(s) {unknown}; 'lora' takes {', '.join(LORA_FIELDS)}.")
    checked = dict(values)
    checked["r"] = _checked_number("lora", "r", values.get("r", 8), int)
    if checked["r"] < 1:
        raise RunConfigError(f"lora.r (--lora-r) must be at least 1, got {values.get('r')!r}.")
    if values.get("alpha") is not None:
        checked["alpha"] = _checked_number("lora", "alpha", values["alpha"], float)
    targets = values.get("targets", ["attention", "experts"])
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise RunConfigError(f"lora.targets (--lora-targets) must name what to adapt, got {values.get('targets')!r}.")
    checked["targets"] = targets
    if "train_routers" in values:
        checked_bool("lora.train_routers", values["train_routers"])
    return checked


def _mapping(section: str, value: Any, *, allow_none: bool = True) -> dict[str, Any] | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, dict):
        raise RunConfigError(
            f"The {section!r} section must be a mapping of field: value, got {type(value).__name__} {value!r}."
        )
    return value


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
        keep_checkpoints: keep the intermediate `checkpoint-*` folders (weights plus optimizer state, about
            three times the model) once the run has finished; by default only the final model stays.

    Adaptive gating includes the routing-aware curriculum (paper §3.2): `training.curriculum` defaults to true
    for `gating="adaptive"` and to false for the fixed-k baselines and the dense model.
    """

    task: str
    model: str | None = None
    moe: MoEConfig | None = field(default_factory=MoEConfig)
    data: DataArgs = field(default_factory=DataArgs)
    training: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None
    lora: dict[str, Any] | None = None
    overwrite: bool = False
    resume: bool = False
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        task = get_task(self.task)  # unknown task: KeyError naming the registered ones
        fields = _training_fields()
        unknown = sorted(set(self.training) - set(fields))
        if unknown:
            raise RunConfigError(
                f"Unknown training field(s) {unknown}: the 'training' section takes TrainingArguments fields "
                "(e.g. num_train_epochs, learning_rate, per_device_train_batch_size) plus curriculum and target_loss."
            )
        if "output_dir" in self.training:
            raise RunConfigError("Give output_dir at the top level of the run config, not under 'training'.")
        for name in ("overwrite", "resume", "keep_checkpoints"):
            checked_bool(name, getattr(self, name))
        if self.overwrite and self.resume:
            raise RunConfigError("--resume continues the run in the output directory; --overwrite replaces it.")
        self.training = _checked_section("training", self.training, fields)
        if "save_steps" in self.training and "save_strategy" not in self.training:
            # adamoe saves once an epoch by default; a run given save_steps means to save on those steps (a run
            # killed mid-epoch resumes from the last of them).
            self.training = {**self.training, "save_strategy": "steps"}
        if "curriculum" not in self.training:
            self.training = {"curriculum": self.gating == "adaptive", **self.training}
        if self.lora is not None:
            self.lora = _checked_lora(self.lora)
        self.data = DataArgs(**_checked_section("data", dataclasses.asdict(self.data), _data_fields()))
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
            # Credentials stay in memory (the Trainer needs them to push), never in run_config.json.
            "training": {k: v for k, v in self.training.items() if not is_secret_key(k)},
            "output_dir": self.output_dir,
            "keep_checkpoints": self.keep_checkpoints,
            **({"lora": dict(self.lora)} if self.lora is not None else {}),  # absent: run configs as they were
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
        if not isinstance(moe, MoEConfig):
            moe = _mapping("moe", moe)
            moe = None if moe is None else MoEConfig.from_dict(moe)
        data = values.get("data") or {}
        if not isinstance(data, DataArgs):
            data = _mapping("data", data, allow_none=False)
            data_fields = _data_fields()
            bad = sorted(set(data) - set(data_fields))
            if bad:
                raise RunConfigError(f"Unknown data field(s) {bad}; 'data' takes {sorted(data_fields)}.")
            data = DataArgs(**_checked_section("data", data, data_fields))
        training = _mapping("training", values.get("training") or {}, allow_none=False)
        for key in ("task", "model", "output_dir"):
            if values.get(key) is not None and not isinstance(values[key], str):
                raise RunConfigError(f"{key} must be a string, got {type(values[key]).__name__} {values[key]!r}.")
        return cls(**{**values, "moe": moe, "data": data, "training": dict(training)})

    @classmethod
    def from_sources(
        cls, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
    ) -> FinetuneConfig:
        """The one constructor behind `adamoe finetune`: a run-config file (a path, or a packaged config's name),
        then `overrides` laid over it section by section, then the defaults, once, for the result.

        `overrides` holds only what was given (the CLI's flags): top-level keys, `data` and `training` mappings,
        and `moe`: a mapping of MoE fields, or None for the dense baseline. The MoE section is the file's
        (`moe: null` stays dense unless MoE fields are given); without one in the file, an adamoe checkpoint's
        own (so fine-tuning it further keeps its structure); the given fields go on top. An explicit batch size
        replaces the file's token budget (`max_tokens`).
        """
        path = resolve_config_path(config_file) if config_file is not None else None
        file_values = read_yaml_mapping(path) if path is not None else {}
        overrides = dict(overrides or {})
        moe_given = overrides.pop("moe", {})
        try:
            for section in ("data", "training"):  # checked before the merge, which would replace a non-mapping
                _mapping(section, file_values.get(section))
            values = deep_merge(file_values, overrides)
            if "task" not in values:
                raise RunConfigError("Name a task with --task (or in --config); `adamoe tasks` lists them.")
            training = _mapping("training", values.get("training") or {}, allow_none=False)
            given_training = overrides.get("training") or {}
            if "per_device_train_batch_size" in given_training and "max_tokens" not in given_training:
                training.pop("max_tokens", None)
            values["training"] = training
            if moe_given is None:
                values["moe"] = None
            elif "moe" in file_values:
                file_moe = _mapping("moe", file_values["moe"])
                values["moe"] = None if file_moe is None and not moe_given else {**(file_moe or {}), **moe_given}
            else:
                model = values.get("model") or get_task(values["task"]).default_model
                stored = _stored_moe_config(model)
                values["moe"] = {**(stored.to_dict() if stored else {}), **moe_given}
            return cls.from_dict(values)
        except (RunConfigError, ValueError, KeyError, TypeError) as err:  # KeyError: an unknown task
            message = err.args[0] if isinstance(err, KeyError) else str(err)
            if path is None or _flags_alone_fail(overrides, moe_given):
                raise RunConfigError(message) from err  # the flags are wrong whatever the file says
            raise RunConfigError(f"{path}: {message}") from err

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> FinetuneConfig:
        """Read a run-config YAML file (a path, or a packaged config's name such as "sst2")."""
        path = resolve_config_path(path)
        values = read_yaml_mapping(path)
        try:
            return cls.from_dict(values, **overrides)
        except (RunConfigError, ValueError, KeyError, TypeError) as err:  # KeyError: an unknown task
            raise RunConfigError(f"{path}: {err.args[0] if isinstance(err, KeyError) else err}") from err


def _flags_alone_fail(overrides: dict[str, Any], moe_given: Any) -> bool:
    """Whether the flags given fail on their own, so that an error is theirs and not the config file's (their
    task, else any: the flags a task does not take are refused by every task alike)."""
    try:
        FinetuneConfig.from_dict({"task": "sst2", **overrides, "moe": moe_given or {}})
    except (RunConfigError, ValueError, KeyError, TypeError):
        return True
    return False


def _stored_moe_config(model: str) -> MoEConfig | None:
    """An adamoe checkpoint's MoE config; None for a dense model or one that cannot be read yet (a wrong path or
    an unreachable Hub id: loading the model explains that, once the run starts)."""
    from ..patching.loading import stored_moe_config  # transformers: only when a run config is built from a model

    try:
        return stored_moe_config(model)
    except (OSError, ValueError):
        return None


def _data_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(DataArgs)}


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000  # after expanding YAML aliases: a run config has a few dozen


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The mapping in a run-config file, refusing what is not one: binary or malformed text, a list, or aliases
    that expand to more than `MAX_CONFIG_NODES` values (the "billion laughs" of YAML anchors)."""
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise RunConfigError(f"{path} is {path.stat().st_size} bytes; a run config is a small YAML file.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise RunConfigError(f"{path} is not a UTF-8 text file ({err.reason}); pass a YAML run config.") from None
    if "\x00" in text:
        raise RunConfigError(f"{path} holds binary data, not YAML; pass a YAML run config (see configs/).")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_CONFIG_NODES:
            raise RunConfigError(
                f"{path}: its aliases expand to more than {MAX_CONFIG_NODES} values; a run config needs no such "
                "anchors. Write the values out."
            )
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RunConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if values is None:
        raise RunConfigError(f"{path} is empty; a run config names at least the task (see configs/sst2.yaml).")
    if not isinstance(values, dict):
        raise RunConfigError(f"{path} must hold a mapping of run-config sections, got {type(values).__name__}.")
    return values


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` stands for once every alias is copied out (memoised: aliases share nodes)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a recursive alias counts once instead of looping
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    else:
        size = 1
    sizes[id(node)] = size
    return size


def read_run_config(folder: str | Path) -> dict[str, Any] | None:
    """The `run_config.json` that `adamoe finetune` wrote into a run folder, or None for a folder without one
    (a model converted or saved some other way). The one reader of it: evaluation and analysis use this."""
    import json

    path = Path(folder) / "run_config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_data_args(folder: str | Path, **overrides: Any) -> DataArgs:
    """The data settings the run in `folder` used (lengths, SQuAD windows, generation lengths, files), with the
    non-None `overrides` on top; plain `DataArgs` for a folder without a run config."""
    saved = read_run_config(folder)
    values = dict(saved.get("data") or {}) if saved else {}
    for name, value in overrides.items():
        if value is not None or name == "train_file":
            values[name] = value
    return DataArgs(**values)


PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


# ---- run configs as nested dictionaries (the reproduction cells and the smoke kit build them this way) ----


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid over it: nested mappings merge key by key, anything else (None included)
    replaces. Neither argument is modified.

    Example:
        ```python
        >>> deep_merge({"moe": {"gating": "adaptive", "threshold": 0.1}}, {"moe": {"gating": "top2"}})
        {'moe': {'gating': 'top2', 'threshold': 0.1}}
        >>> deep_merge({"moe": {"gating": "adaptive"}}, {"moe": None})   # the dense baseline
        {'moe': None}
        ```
    """
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def packaged_run_config(task: str) -> dict[str, Any]:
    """The paper's run config for `task` (`adamoe/configs/<task>.yaml`) as nested sections, defaults filled in."""
    values = FinetuneConfig.from_yaml(task).to_dict()
    values.pop("output_dir")  # the packaged default; every caller chooses its own
    return values
