"""The model card (`README.md`) a fine-tuned adamoe model carries, on disk and on the Hub.

Built with huggingface_hub's card tooling (`ModelCardData` for the YAML metadata, `EvalResult` for the
`model-index` the Hub shows as results), from the run's `results.json` and run config, so the card says what
the checkpoint is: the base model, the MoE structure and routing in words, the figures it reached, and how to
load it: a snippet that names the Hub repository the run was pushed to (or the folder it saved the model in) and
loads it with `adamoe.from_pretrained`, since plain transformers would drop the experts (a dense run's, with its
transformers class).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..tasks.base import Task

CARD_NAME = "README.md"


def _looks_like_hub_id(name: str) -> bool:
    path = Path(name).expanduser()
    return not path.exists() and not name.startswith((".", "/", "~")) and name.count("/") <= 1


def _moe_in_words(moe: dict[str, Any] | None) -> str:
    if moe is None:
        return "A dense model (the paper's Dense baseline): its feed-forward blocks are unchanged."
    gating = moe["gating"]
    top_k = moe.get("top_k", 2)
    if gating == "adaptive":
        rule = (
            f"adaptive gating: each token uses its top-1 expert, and further experts (up to {top_k}) only while "
            f"the router is unsure, i.e. while the {moe['threshold_on']} gap between their gate probabilities and "
            f"the first one's is at most T = {moe['threshold']}"
        )
    elif gating == "topk":
        rule = f"fixed top-{top_k} routing"
    else:
        rule = f"fixed {gating} routing"
    every = moe.get("every_n_layers", 1)
    layers = "every feed-forward block" if every == 1 else f"every {every}th feed-forward block"
    return (
        f"Mixture-of-experts: {layers} is an MoE block of {moe['num_experts']} experts with {rule}; experts "
        f"combined by `{moe['combine']}` weights, initialised by `{moe['expert_init']}`, balance-loss coefficient "
        f"{moe['aux_loss_coef']} (Li et al., EMNLP 2023)."
    )


def model_card(
    results: dict[str, Any],
    task: Task,
    run_config: dict[str, Any],
    *,
    load_from: str | None = None,
    model_class: str | None = None,
) -> Any:
    """A `huggingface_hub.ModelCard` for the run that `results` (its `results.json`) describes.

    `load_from` is what the card's loading snippet names: the Hub repository the run is pushed to, by default the
    folder the run saved the model in (`results["checkpoint"]`). `model_class` is the transformers class of the
    saved model (its config's `architectures`), which a dense run's snippet loads; by default the task's Auto class.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    base = results["model"]
    dataset, dataset_config = task.hub_dataset
    own_data = bool(run_config.get("data", {}).get("train_file"))
    eval_results = [
        EvalResult(
            task_type=task.hub_task_type,
            dataset_type=dataset,
            dataset_name=task.default_dataset if not own_data else "local validation file",
            dataset_config=dataset_config,
            dataset_split="validation",
            metric_type=name,
            metric_value=round(float(value), 4),
        )
        for name, value in results["metrics"].items()
        if name in task.metric_names
    ]
    data = ModelCardData(
        library_name="adamoe",
        base_model=base if _looks_like_hub_id(base) else None,
        tags=["mixture-of-experts", "adaptive-gating", task.name],
        datasets=None if own_data else [dataset],
        pipeline_tag=task.hub_task_type,
        model_name=f"{Path(base).name}-adamoe-{task.name}",
        eval_results=eval_results or None,
    )
    figures = "\n".join(f"| {name} | {value:.4f} |" for name, value in results["metrics"].items())
    training = [
        ("gating", results["gating"]),
        ("train time (s)", results.get("train_time_s")),
        ("tokens with two or more experts", results.get("two_expert_fraction")),
        ("expert FLOPs vs top-2", results.get("flops_vs_top2")),
        ("curriculum", results.get("curriculum")),
        ("seed", results.get("seed")),
    ]
    training_rows = "\n".join(
        f"| {name} | {value:.4g} |" if isinstance(value, float) else f"| {name} | {value} |"
        for name, value in training
        if value is not None
    )
    body = f"""
# {data.model_name}

{task.description} Fine-tuned from `{base}` with [adamoe](https://pypi.org/project/adamoe/).

{_moe_in_words(results.get("moe"))}

## Results (validation)

| metric | value |
|---|---|
{figures or "| (no validation data) | |"}

## Training

| figure | value |
|---|---|
{training_rows}

## How to load it

{_how_to_load(results.get("moe") is not None, load_from or results["checkpoint"], model_class or task.auto_model)}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _how_to_load(moe: bool, source: str, model_class: str) -> str:
    """The card's loading instructions: a snippet that loads this very model from `source` (a Hub id or folder)."""
    if not moe:  # adamoe.from_pretrained refuses a dense checkpoint without a MoE config: plain transformers
        return f"""A plain transformers checkpoint:

```python
from transformers import {model_class}

model = {model_class}.from_pretrained({json.dumps(source)})
```"""
    return f"""The experts live in adamoe's MoE blocks; plain `AutoModel*.from_pretrained` would load the dense model
with randomly initialised feed-forward blocks. Load it with adamoe:

```python
import adamoe

model = adamoe.from_pretrained({json.dumps(source)})
```"""


def write_model_card(
    folder: str | Path,
    results: dict[str, Any],
    task: Task,
    run_config: dict[str, Any],
    *,
    load_from: str | None = None,
) -> Path:
    """Write the card to `folder/README.md` atomically; returns its path. `load_from`: the Hub id the model is
    pushed to, for the loading snippet (see `model_card`); the saved model's class is read from its config."""
    from ..files import write_text_atomically

    path = Path(folder) / CARD_NAME
    config = Path(folder) / "config.json"
    architectures = json.loads(config.read_text()).get("architectures") if config.is_file() else None
    card = model_card(
        results, task, run_config, load_from=load_from, model_class=architectures[0] if architectures else None
    )
    write_text_atomically(path, str(card))
    return path
