"""The task contract: `Task`, the data arguments every task reads, and the bodies every task shares.

A task is data plus the few functions in which tasks really differ. `Task` holds what it is (its data, model,
metric and Hub task type) and points at its own `preprocess`, `compute_metrics` and `prediction_files`; what
every task does alike (loading local files or the Hub, the best-model settings, the padding collator, reading
logits out of an `EvalPrediction`) is written once here. The registry (`registry.TASKS`) lists one `Task` per
module. The trainer and the CLI only talk to this contract, so adding a task never touches them:

```python
task = TASKS["sst2"]
model = task.model_class.from_pretrained(task.default_model, **task.model_kwargs)
raw = task.load_raw(data)                                   # DatasetDict: "train", "validation"
prepared = task.preprocess(raw, tokenizer, data, model.config)
args = TrainingArguments(output_dir, **task.training_overrides(data))  # Seq2Seq* when task.kind == "seq2seq"
trainer = Trainer(model, args, train_dataset=prepared.train, eval_dataset=prepared.eval,
                  data_collator=task.data_collator(tokenizer, model),
                  compute_metrics=task.compute_metrics(prepared, tokenizer, data),
                  preprocess_logits_for_metrics=task.preprocess_logits_for_metrics)
```

Every task's metrics come out of a plain `trainer.evaluate()`: QA post-processing happens inside its
`compute_metrics`, and the causal-LM tasks compute perplexity from the logits (see `causal_lm.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from .io import HubUnreachableError, TaskInputError

if TYPE_CHECKING:
    import torch
    from datasets import Dataset, DatasetDict
    from transformers import EvalPrediction, PretrainedConfig, PreTrainedTokenizerBase

TaskKind = Literal["classification", "qa", "seq2seq", "causal_lm"]
DIRECTIONS = ("de-en", "en-de")
SPLITS = ("train", "validation")


MetricsFn = Callable[["EvalPrediction"], dict[str, float]]
LogitsReducer = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@dataclass
class DataArgs:
    """Where a task's data comes from and how it is cut to length. `None` lengths mean the task's default.

    Example:
        ```python
        >>> from adamoe.tasks import DataArgs
        >>> data = DataArgs(train_file="train.tsv", validation_file="dev.tsv", max_train_samples=1000)
        ```
    """

    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id to use instead of the task's default (e.g. 'nyu-mll/glue')."}
    )
    dataset_config: str | None = field(
        default=None,
        metadata={"help": "Hub dataset config to use instead of the task's default (e.g. 'wikitext-2-raw-v1')."},
    )
    train_file: str | None = field(
        default=None,
        metadata={"help": "Local training file (json/jsonl/csv/tsv/parquet/txt, as the task accepts); skips the Hub."},
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Local validation file, same formats as train_file; skips the Hub."}
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Keep the first N raw training rows (sentences, questions, pairs, lines, dialogues)."},
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N raw validation rows."})
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Max tokens per input for sst2 (default 128), squad (384, one window) and soda (256)."},
    )
    doc_stride: int = field(
        default=128, metadata={"help": "squad: tokens of overlap between consecutive windows of a long context."}
    )
    n_best_size: int = field(
        default=20, metadata={"help": "squad: start and end candidates per window considered in post-processing."}
    )
    max_answer_length: int = field(
        default=30, metadata={"help": "squad: longest answer, in tokens, that post-processing may return."}
    )
    max_source_length: int | None = field(
        default=None, metadata={"help": "Max source tokens for wmt19 (default 256) and cnn_dailymail (1024)."}
    )
    max_target_length: int | None = field(
        default=None,
        metadata={"help": "Max target tokens, in training and generation: wmt19 (default 256), cnn_dailymail (128)."},
    )
    num_beams: int | None = field(
        default=None, metadata={"help": "Beams for evaluation generation; None keeps the model's generation config."}
    )
    no_repeat_ngram_size: int | None = field(
        default=None,
        metadata={
            "help": "Evaluation generation never repeats an n-gram of this many tokens (BART's CNN/DailyMail "
            "setting: 3; greedy decoding of a briefly fine-tuned model otherwise loops on a sentence); saved in the "
            "run's generation_config.json. None keeps the model's generation config."
        },
    )
    source_prefix: str | None = field(
        default=None,
        metadata={"help": "Text put before every source; None picks it from the model type (T5: 'summarize: ')."},
    )
    direction: str = field(default="de-en", metadata={"help": f"wmt19: translation direction, one of {DIRECTIONS}."})
    block_size: int | None = field(
        default=None,
        metadata={"help": "wikitext: tokens per training block; default min(1024, tokenizer.model_max_length)."},
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization (datasets.map num_proc)."}
    )
    skip_bad_examples: bool = field(
        default=False,
        metadata={"help": "squad: drop questions whose answer_start does not point at the answer (else an error)."},
    )

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}.")
        for name in (
            "max_train_samples max_eval_samples max_seq_length doc_stride n_best_size max_answer_length "
            "max_source_length max_target_length num_beams no_repeat_ngram_size block_size preprocessing_num_workers"
        ).split():
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}.")


@dataclass
class PreparedData:
    """Tokenized datasets ready for a Trainer, plus what post-processing needs.

    Args:
        train: Training features, or `None` when no training split was loaded.
        eval: Evaluation features in model-input columns only (`eval_dataset` for the Trainer).
        eval_examples: QA only: the raw validation examples, for post-processing and the gold answers.
        eval_features: QA only: `eval` plus `example_id` and `offset_mapping`, row for row.
        cache: Results a task derived from these features, kept for reuse within this data's lifetime.
    """

    train: Dataset | None
    eval: Dataset | None
    eval_examples: Dataset | None = None
    eval_features: Dataset | None = None
    # What a task computed from these features and may need again (SQuAD: the answers post-processed from one
    # set of logits, read by compute_metrics and then by prediction_files). It lives and dies with the data.
    cache: dict[str, Any] = field(default_factory=dict, repr=False)


Preprocess = Callable[["DatasetDict", "PreTrainedTokenizerBase", "DataArgs", "PretrainedConfig | None"], PreparedData]
MetricsFactory = Callable[[PreparedData, "PreTrainedTokenizerBase", "DataArgs"], MetricsFn]
PredictionFiles = Callable[..., dict[str, str]]


@dataclass(frozen=True, eq=False)
class Task:
    """One task: a frozen description plus the functions in which it differs from the others.

    Attributes:
        name: Registry key and CLI `--task` value.
        description: One line for `--help` and reports.
        kind: "classification", "qa", "seq2seq" (use `Seq2SeqTrainer`) or "causal_lm".
        hub_dataset: `(path, config)` of the default data on the Hub.
        hub_task_type: the Hub's task type (e.g. "text-classification"), for model cards.
        default_model: Hub id of the paper's model for this task.
        default_dataset: Human description of the default Hub data.
        metric_names: Keys of the dict `compute_metrics` returns.
        main_metric: The metric the paper reports (`metric_for_best_model`).
        greater_is_better: Whether a larger `main_metric` is better.
        auto_model: The transformers Auto class that loads the model with the task's head (`model_class`).
        decoder_auto_model: For a task with a decoder-only formulation (`prompting.py`), the Auto class that loads a
            decoder-only model for it (`model_class_for`).
        read_file: Reads and checks one local data file.
        offline_example: Example train and validation file names, for the message when the Hub is unreachable.
        preprocess: `(raw, tokenizer, data, model_config=None) -> PreparedData`: rows into model features.
        compute_metrics: `(prepared, tokenizer, data) -> compute_metrics`: the Trainer's `EvalPrediction` in,
            metrics out.
        prediction_files: `(predictions, prepared, tokenizer, data, model=None) -> {file name: text}`: the
            validation predictions in the format official scorers read. `model` is there for a task that must
            generate them (dialogue: its metric is the perplexity of the references); the others read
            `predictions`.
        data_collator: `(tokenizer, model=None) -> collator`: pads a list of features into a batch.
        check_rows: `(rows, source, data) -> rows`: checks (or filters) one loaded split, `source` naming it.
        model_kwargs: Extra `from_pretrained` kwargs the head needs (e.g. `num_labels`).
        preprocess_logits_for_metrics: Reduces logits per batch before the Trainer stores them, or `None`.
        extra_training_arguments: `TrainingArguments` fields the task needs beyond the best-model metric
            (generation settings, label names), from the data arguments.
        pair_format: Sequence-to-sequence tasks: how a row becomes a (source, target) pair (`seq2seq.PairFormat`).
    """

    name: str
    description: str
    kind: TaskKind
    hub_dataset: tuple[str, str | None]
    hub_task_type: str
    default_model: str
    default_dataset: str
    metric_names: tuple[str, ...]
    main_metric: str
    greater_is_better: bool
    auto_model: str
    read_file: Callable[[Path], Dataset]
    offline_example: tuple[str, str]
    preprocess: Preprocess
    compute_metrics: MetricsFactory
    prediction_files: PredictionFiles
    data_collator: Callable[..., Any]
    check_rows: Callable[[Dataset, str, DataArgs], Dataset] | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    preprocess_logits_for_metrics: LogitsReducer | None = None
    extra_training_arguments: Callable[[DataArgs], dict[str, Any]] | None = None
    pair_format: Any = None
    decoder_auto_model: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_kwargs", MappingProxyType(dict(self.model_kwargs)))  # shared: read-only

    @property
    def model_class(self) -> type:
        """The transformers class named by `auto_model`, imported on first use so that listing the tasks
        (`adamoe tasks`, `--help`) needs neither torch nor transformers."""
        import transformers

        return getattr(transformers, self.auto_model)

    def model_class_for(self, config: PretrainedConfig) -> type:
        """The class that loads a model of `config` with this task's head: `model_class`, or for a decoder-only
        model of a task with a decoder-only formulation, `decoder_auto_model`.

        Raises:
            TaskInputError: transformers has no head of this task for the model type; the message says what to use.
        """
        import transformers

        auto = self.model_class
        if self.decoder_auto_model is not None and not getattr(config, "is_encoder_decoder", False):
            auto = getattr(transformers, self.decoder_auto_model)
        if type(config) not in auto._model_mapping:
            usable = "an encoder-decoder model (FSMT, BART, T5) or a decoder-only LLM (Llama, Qwen, Mistral)"
            if self.kind == "classification":
                usable = "an encoder (BERT, RoBERTa) or a decoder with a classification head (Llama, Qwen, Mistral)"
            elif self.kind == "qa":
                usable = "an encoder (BERT, RoBERTa) or a decoder with a QA head (Llama, Qwen, Mistral)"
            elif self.kind == "causal_lm":
                usable = "a causal language model (GPT-2, Llama, Qwen)"
            raise TaskInputError(
                f"{self.name} needs {auto.__name__}, which transformers does not provide for {config.model_type} "
                f"models; use {usable}."
            )
        return auto

    def load_raw(self, data: DataArgs) -> DatasetDict:
        """The raw rows: local files when `data` names any, the Hub otherwise; each split checked."""
        raw = load_splits(
            data, task=self.name, hub=self.hub_dataset, read_file=self.read_file, offline_example=self.offline_example
        )
        if self.check_rows is None:
            return raw
        from datasets import DatasetDict

        sources = {"train": data.train_file, "validation": data.validation_file}
        return DatasetDict(
            {split: self.check_rows(rows, sources[split] or f"{split} split", data) for split, rows in raw.items()}
        )

    def training_overrides(self, data: DataArgs) -> dict[str, Any]:
        """`TrainingArguments` fields this task needs: the best-model metric, and the task's own."""
        overrides = {"metric_for_best_model": self.main_metric, "greater_is_better": self.greater_is_better}
        if self.extra_training_arguments is not None:
            overrides |= self.extra_training_arguments(data)
        return overrides


def logits_of(predictions: EvalPrediction) -> Any:
    """The model's first output from an `EvalPrediction` (the Trainer hands a tuple when a model returns more)."""
    out = predictions.predictions
    return out[0] if isinstance(out, tuple) else out


def padding_collator(tokenizer: PreTrainedTokenizerBase, model: Any = None) -> Any:
    """Pads every feature of a batch to its longest row (`DataCollatorWithPadding`)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def no_prediction_files(predictions: EvalPrediction, prepared: PreparedData, *args: Any, **kwargs: Any) -> dict:
    """For a task scored by perplexity over given text: there is no predicted text to re-score."""
    return {}


def load_splits(
    data: DataArgs,
    *,
    task: str,
    hub: tuple[str, str | None],
    read_file: Callable[[Path], Dataset],
    offline_example: tuple[str, str],
) -> DatasetDict:
    """Loads "train" and "validation" from local files when any is given, from the Hub otherwise.

    With local files only the splits given are loaded (e.g. just `validation_file` for evaluation).

    Args:
        data: The data arguments (files, Hub overrides, sample limits).
        task: Task name, for the offline hint.
        hub: Default Hub `(path, config)`; `data.dataset_name`/`data.dataset_config` override them.
        read_file: Reads and checks one local file.
        offline_example: Example train and validation file names for the offline hint.

    Raises:
        HubUnreachableError: The Hub could not be reached and no local file was given.
    """
    import datasets
    from datasets import DatasetDict
    from huggingface_hub.errors import LocalEntryNotFoundError

    files = {"train": data.train_file, "validation": data.validation_file}
    if any(files.values()):
        splits = {split: read_file(Path(path)) for split, path in files.items() if path}
    else:
        path, config = data.dataset_name or hub[0], data.dataset_config or hub[1]
        try:
            loaded = datasets.load_dataset(path, config)
        except (ConnectionError, LocalEntryNotFoundError) as err:  # ConnectionError covers OfflineModeIsEnabled
            train, dev = offline_example
            raise HubUnreachableError(
                f"Could not load {path} ({config}) from the Hugging Face Hub: {err}\n"
                f"Offline, point the task at local files instead:\n"
                f"  adamoe finetune --task {task} --model PATH --train-file {train} --validation-file {dev}\n"
                "(HF_HUB_OFFLINE=1 skips the download retries.)"
            ) from err
        splits = {split: loaded[split] for split in SPLITS if split in loaded}
    limits = {"train": data.max_train_samples, "validation": data.max_eval_samples}
    return DatasetDict({split: take(rows, limits[split]) for split, rows in splits.items()})


def take(rows: Dataset, n: int | None) -> Dataset:
    """The first `n` rows of `rows` (all of them when `n` is `None`)."""
    return rows if n is None else rows.select(range(min(n, len(rows))))


def tokenize_split(
    raw: DatasetDict, split: str, fn: Callable[[dict[str, list]], dict[str, list]], data: DataArgs
) -> Dataset | None:
    """Applies a batched `fn` to `raw[split]`, replacing all raw columns; `None` when the split is absent."""
    if split not in raw:
        return None
    rows = raw[split]
    return rows.map(
        fn,
        batched=True,
        remove_columns=rows.column_names,
        num_proc=data.preprocessing_num_workers,
        desc=f"Tokenizing {split}",
    )


def prepare_splits(raw: DatasetDict, fn: Callable[[dict[str, list]], dict[str, list]], data: DataArgs) -> PreparedData:
    """`PreparedData` with the same batched `fn` applied to the train and validation splits."""
    return PreparedData(train=tokenize_split(raw, "train", fn, data), eval=tokenize_split(raw, "validation", fn, data))
