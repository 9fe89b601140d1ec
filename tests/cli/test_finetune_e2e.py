"""Every task end to end through `adamoe finetune` and `adamoe evaluate`, on the smoke kit's tiny models and
learnable data in each task's real local format, with a metric floor that a broken pipeline would miss
(shuffled labels, misaligned answer spans, unmasked padding or a balance loss leaking into perplexity all
land far below it)."""

import json

import pytest
import yaml
from typer.testing import CliRunner

import adamoe
from adamoe.cli import app
from adamoe.smoke import TASK_NAMES, one_thread, write_smoke_kit
from adamoe.tasks import DataArgs, get_task

runner = CliRunner()
RESULT_KEYS = {
    "task", "model", "gating", "moe", "metrics", "train_time_s", "time_to_target_s",
    "two_expert_fraction", "two_expert_fraction_per_layer", "tokens_per_second", "seed", "versions",
}  # fmt: skip
LOWER_IS_BETTER = {"perplexity"}
PREDICTION_FILES = {
    "sst2": ["eval_predictions.tsv"],
    "squad": ["eval_predictions.json"],
    "wmt19": ["generated_predictions.txt"],
    "cnn_dailymail": ["generated_predictions.txt"],
    "wikitext": [],  # scored by perplexity
    "soda": ["generated_predictions.txt"],  # scored by perplexity, but a dialogue model's responses are read
}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return write_smoke_kit(tmp_path_factory.mktemp("kit"))


def run_cli(*args: str) -> str:
    with one_thread():  # the tiny models run several times faster on one thread of a shared CPU
        result = runner.invoke(app, list(args), terminal_width=200)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.mark.slow
@pytest.mark.parametrize("task", TASK_NAMES)
def test_finetune_then_evaluate_from_the_cli(task, kit, tmp_path):
    smoke = kit[task]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(smoke.run_config()))  # the paper's config with the kit's model and data
    out = tmp_path / "run"
    output = run_cli("finetune", "--config", str(config), "--output-dir", str(out), "--target-loss", "100")

    results = json.loads((out / "results.json").read_text())
    assert RESULT_KEYS <= results.keys()
    assert (results["gating"], results["moe"]["threshold"], results["moe"]["num_experts"]) == ("adaptive", 0.1, 16)
    main = adamoe.tasks.get_task(task).main_metric
    value = results["metrics"][main]
    if main in LOWER_IS_BETTER:
        assert value < smoke.metric_floor
    else:
        assert value > smoke.metric_floor
    assert main in output  # the printed table
    assert results["time_to_target_s"] is not None and results["time_to_target_s"] <= results["train_time_s"]

    model = adamoe.from_pretrained(str(out))
    names = [block.layer_name for _, block in adamoe.moe_blocks(model)]
    assert sorted(results["two_expert_fraction_per_layer"]) == sorted(names)
    assert 0.0 <= results["two_expert_fraction"] <= 1.0

    evaluated = run_cli(
        "evaluate",
        "--task",
        task,
        "--checkpoint",
        str(out),
        "--validation-file",
        str(smoke.validation_file),
        *("--batch-size", "32"),
    )
    assert main in evaluated  # the same table as finetune's
    metrics = json.loads((out / "eval" / "eval_results.json").read_text())
    assert metrics[main] == pytest.approx(value, rel=1e-4, abs=1e-6)
    files = PREDICTION_FILES[task]
    assert sorted(p.name for p in (out / "eval").glob("*_predictions.*")) == files
    assert sorted(p.name for p in out.glob("*_predictions.*")) == files  # finetune's final evaluation too
    if task in RESCORERS:
        RESCORERS[task](out, smoke, results["metrics"])


@pytest.mark.slow
def test_dense_baseline_trains_the_unpatched_model(kit, tmp_path):
    smoke = kit["sst2"]
    out = tmp_path / "dense"
    run_cli("finetune", *smoke.cli_args(), "--gating", "dense", "--output-dir", str(out))
    results = json.loads((out / "results.json").read_text())
    assert results["gating"] == "dense" and results["two_expert_fraction"] is None
    assert results["metrics"]["accuracy"] > smoke.metric_floor
    config = json.loads((out / "config.json").read_text())
    assert "adamoe" not in config


@pytest.mark.slow
def test_finetune_with_analyze_writes_the_routing_report(kit, tmp_path):
    smoke = kit["sst2"]
    out = tmp_path / "run"
    run_cli("finetune", *smoke.cli_args(), "--num-experts", "4", "--output-dir", str(out), "--analyze")
    analysis = out / "analysis"
    pngs = sorted(p.name for p in analysis.glob("*.png"))
    assert len(pngs) == 3, pngs
    assert any(p.suffix == ".md" and "two experts" in p.read_text().lower() for p in analysis.iterdir())


def _official_v11_scores(predictions: dict[str, str], gold: dict[str, list[str]]) -> dict[str, float]:
    """EM and F1 as the official SQuAD v1.1 `evaluate-v1.1.py` computes them, written out again here."""
    import collections
    import re
    import string

    def normalize(text: str) -> str:
        text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
        return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())

    def f1(prediction: str, truth: str) -> float:
        predicted, true = normalize(prediction).split(), normalize(truth).split()
        common = collections.Counter(predicted) & collections.Counter(true)
        same = sum(common.values())
        if same == 0:
            return 0.0
        precision, recall = same / len(predicted), same / len(true)
        return 2 * precision * recall / (precision + recall)

    em = [max(float(normalize(predictions[i]) == normalize(t)) for t in truths) for i, truths in gold.items()]
    f1s = [max(f1(predictions[i], t) for t in truths) for i, truths in gold.items()]
    return {"exact_match": 100 * sum(em) / len(em), "f1": 100 * sum(f1s) / len(f1s)}


def _rescore_squad(out, smoke, reported):
    """eval_predictions.json, scored by the official v1.1 rules, gives exactly the reported F1 and EM."""
    predictions = json.loads((out / "eval_predictions.json").read_text())
    examples = get_task("squad").load_raw(DataArgs(validation_file=str(smoke.validation_file)))["validation"]
    gold = {i: answers["text"] for i, answers in zip(examples["id"], examples["answers"], strict=True)}
    assert set(predictions) == set(gold)
    scores = _official_v11_scores(predictions, gold)
    assert scores["f1"] == pytest.approx(reported["f1"], abs=1e-6)
    assert scores["exact_match"] == pytest.approx(reported["exact_match"], abs=1e-6)


def _rescore_wmt19(out, smoke, reported):
    """generated_predictions.txt, one line per example, scored by sacreBLEU itself, gives the reported BLEU."""
    import sacrebleu

    lines = (out / "generated_predictions.txt").read_text().splitlines()
    rows = get_task("wmt19").load_raw(DataArgs(validation_file=str(smoke.validation_file)))["validation"]
    references = [pair["en"] for pair in rows["translation"]]
    assert len(lines) == len(references)
    assert sacrebleu.corpus_bleu(lines, [references]).score == pytest.approx(reported["bleu"], abs=1e-6)


def _check_soda_responses(out, smoke, reported):
    """generated_predictions.txt holds the model's greedy response to every context: the first one checked
    against the context alone (no batch, no padding), generated through the saved model."""
    import torch
    from transformers import AutoTokenizer

    from adamoe.tasks.soda import turn_pairs

    lines = (out / "generated_predictions.txt").read_text().splitlines()
    rows = get_task("soda").load_raw(DataArgs(validation_file=str(smoke.validation_file)))["validation"]
    contexts, _ = turn_pairs({"dialogue": list(rows["dialogue"])})
    assert len(lines) == len(contexts)
    tokenizer, model = AutoTokenizer.from_pretrained(out), adamoe.from_pretrained(str(out))
    eos = tokenizer.eos_token_id
    prompt = tokenizer(contexts[0], add_special_tokens=False)["input_ids"] + [eos]
    with torch.no_grad():
        generated = model.generate(
            torch.tensor([prompt]), max_new_tokens=32, do_sample=False, pad_token_id=eos, eos_token_id=eos
        )
    response = generated[0, len(prompt) :].tolist()
    response = response[: response.index(eos)] if eos in response else response
    assert lines[0] == " ".join(tokenizer.decode(response, skip_special_tokens=True).split())


# task -> an independent re-scoring of the prediction files finetune wrote
RESCORERS = {"squad": _rescore_squad, "wmt19": _rescore_wmt19, "soda": _check_soda_responses}
