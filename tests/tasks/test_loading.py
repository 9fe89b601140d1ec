"""Every task's `load_raw` on tiny local files in each supported format, the Hub path (mocked), and the errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest
from datasets import Dataset, DatasetDict

from adamoe.tasks import TASKS, DataArgs, DataFormatError, HubUnreachableError

SST2_ROWS = [
    {"sentence": 'a "gripping" film', "label": 1},
    {"sentence": "NA", "label": 0},  # must stay text, not become a missing value
    {"sentence": "dull , dull , dull", "label": 0},
]
SQUAD_ROWS = [
    {
        "id": "q1",
        "title": "Paris",
        "context": "Paris is the capital of France.",
        "question": "What is the capital of France?",
        "answers": {"text": ["Paris"], "answer_start": [0]},
    }
]
PAIRS = [{"translation": {"de": "Guten Morgen.", "en": "Good morning."}}, {"translation": {"de": "Ja.", "en": "Yes."}}]
ARTICLES = [{"id": "1", "article": "The cat sat on the mat. It was happy.", "highlights": "Cat sat.\nCat happy."}]
DIALOGUES = [{"dialogue": ["Hi .", "Hello , how are you ?", "Fine ."]}, {"dialogue": ["Bye .", "See you ."]}]


def write(path: Path, rows: list[dict]) -> str:
    """Writes `rows` in the format `path`'s suffix names; returns the path as a string."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif path.suffix == ".parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:  # GLUE-style TSV: header row, no quoting
        lines = ["\t".join(rows[0])] + ["\t".join(str(value) for value in row.values()) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def load(task: str, path: str, **kwargs) -> DatasetDict:
    return TASKS[task].load_raw(DataArgs(train_file=path, validation_file=path, **kwargs))


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".json", ".jsonl", ".parquet"])
def test_sst2_formats(tmp_path, suffix):
    raw = load("sst2", write(tmp_path / f"train{suffix}", SST2_ROWS))
    assert set(raw) == {"train", "validation"}
    assert raw["train"]["sentence"] == [row["sentence"] for row in SST2_ROWS]
    assert raw["train"]["label"] == [1, 0, 0]


def test_sst2_reads_the_glue_tsv_with_bare_quotes(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text('sentence\tlabel\nit \'s a " charming " and often affecting journey . \t1\n', encoding="utf-8")
    raw = TASKS["sst2"].load_raw(DataArgs(validation_file=str(path)))
    assert list(raw) == ["validation"]  # only the split that was given
    assert raw["validation"][0] == {"sentence": 'it \'s a " charming " and often affecting journey . ', "label": 1}


def test_sample_limits(tmp_path):
    raw = load("sst2", write(tmp_path / "t.tsv", SST2_ROWS), max_train_samples=2, max_eval_samples=1)
    assert (len(raw["train"]), len(raw["validation"])) == (2, 1)


def test_missing_columns_name_the_file_the_columns_found_and_an_example(tmp_path):
    path = write(tmp_path / "train.tsv", [{"text": "good", "target": 1}])
    with pytest.raises(DataFormatError) as err:
        load("sst2", path)
    message = str(err.value)
    assert path in message and "['sentence']" not in message
    assert "missing column(s) ['sentence', 'label']" in message and "found ['text', 'target']" in message
    assert '"sentence": "a gripping , funny film"' in message  # the example row


def test_empty_file_and_header_only(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="empty"):
        load("soda", str(empty))
    header = tmp_path / "header.tsv"
    header.write_text("sentence\tlabel\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="no rows"):
        load("sst2", str(header))


def test_sst2_rejects_labels_outside_0_1(tmp_path):
    path = write(tmp_path / "train.tsv", [{"sentence": "good", "label": 1}, {"sentence": "meh", "label": 2}])
    with pytest.raises(DataFormatError, match=r"0 \(negative\) or 1 \(positive\); found \[2\]"):
        load("sst2", path)


def test_unsupported_suffix_and_missing_file(tmp_path):
    with pytest.raises(DataFormatError, match="unsupported file type '.txt'"):
        load("sst2", write(tmp_path / "train.txt", SST2_ROWS))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load("sst2", str(tmp_path / "nope.tsv"))


def test_squad_official_nested_json(tmp_path):
    document = {
        "version": "1.1",
        "data": [
            {
                "title": "Paris",
                "paragraphs": [
                    {
                        "context": "Paris is the capital of France.",
                        "qas": [
                            {"id": "q1", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]},
                            {"id": "q2", "question": "Country?", "answers": [{"text": "France", "answer_start": 24}]},
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "dev-v1.1.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    raw = load("squad", str(path))
    assert raw["validation"]["id"] == ["q1", "q2"]
    assert raw["validation"][1]["answers"] == {"text": ["France"], "answer_start": [24]}
    assert raw["validation"][1]["title"] == "Paris"


def test_squad_nested_json_missing_a_field(tmp_path):
    path = tmp_path / "dev-v1.1.json"
    path.write_text(
        json.dumps({"data": [{"title": "Paris", "paragraphs": [{"context": "Paris."}]}]}), encoding="utf-8"
    )
    with pytest.raises(DataFormatError, match="without the field 'qas'"):
        load("squad", str(path))


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_squad_hub_schema(tmp_path, suffix):
    raw = load("squad", write(tmp_path / f"dev{suffix}", SQUAD_ROWS))
    assert raw["train"][0]["answers"] == {"text": ["Paris"], "answer_start": [0]}


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_wmt19_hub_schema(tmp_path, suffix):
    raw = load("wmt19", write(tmp_path / f"valid{suffix}", PAIRS))
    assert raw["validation"][0]["translation"] == {"de": "Guten Morgen.", "en": "Good morning."}


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_wmt19_flat_columns(tmp_path, suffix):
    rows = [{"de": pair["translation"]["de"], "en": pair["translation"]["en"]} for pair in PAIRS]
    raw = load("wmt19", write(tmp_path / f"valid{suffix}", rows))
    assert raw["validation"]["translation"] == [pair["translation"] for pair in PAIRS]


def test_wmt19_pairs_without_both_languages(tmp_path):
    with pytest.raises(DataFormatError, match="'translation' must hold 'de' and 'en'"):
        load("wmt19", write(tmp_path / "v.jsonl", [{"translation": {"fr": "Oui.", "en": "Yes."}}]))


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_cnn_dailymail_formats(tmp_path, suffix):
    rows = ARTICLES if suffix != ".csv" else [{"article": "The cat sat.", "highlights": "Cat sat."}]
    raw = load("cnn_dailymail", write(tmp_path / f"v{suffix}", rows))
    assert raw["validation"][0]["highlights"] == rows[0]["highlights"]


def test_wikitext_tokens_file_matches_the_hub_rows(tmp_path):
    path = tmp_path / "wiki.valid.tokens"
    path.write_text(" \n = Lobster = \n \n It is red . \n", encoding="utf-8")
    raw = load("wikitext", str(path))
    # As the Hub's wikitext builder yields them: line breaks kept, blank lines as "".
    assert raw["validation"]["text"] == ["", " = Lobster = \n", "", " It is red . \n"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_wikitext_text_column(tmp_path, suffix):
    raw = load("wikitext", write(tmp_path / f"v{suffix}", [{"text": " It is red . \n"}]))
    assert raw["train"]["text"] == [" It is red . \n"]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_soda_formats(tmp_path, suffix):
    raw = load("soda", write(tmp_path / f"v{suffix}", DIALOGUES))
    assert raw["validation"]["dialogue"] == [row["dialogue"] for row in DIALOGUES]


def test_soda_rejects_a_dialogue_that_is_not_a_list_of_turns(tmp_path):
    with pytest.raises(DataFormatError, match="list of turn strings"):
        load("soda", write(tmp_path / "v.jsonl", [{"dialogue": "Hi . Hello ."}]))


HUB_IDS = {
    "sst2": ("nyu-mll/glue", "sst2"),
    "squad": ("rajpurkar/squad", None),
    "wmt19": ("wmt/wmt19", "de-en"),
    "cnn_dailymail": ("abisee/cnn_dailymail", "3.0.0"),
    "wikitext": ("Salesforce/wikitext", "wikitext-103-raw-v1"),
    "soda": ("allenai/soda", None),
}


@pytest.mark.parametrize("name", list(HUB_IDS))
def test_hub_path_loads_train_and_validation(monkeypatch, name):
    calls = []
    rows = {"sst2": SST2_ROWS, "squad": SQUAD_ROWS, "wmt19": PAIRS, "cnn_dailymail": ARTICLES, "soda": DIALOGUES}
    split = Dataset.from_list(rows.get(name, [{"text": "a"}, {"text": "b"}]))

    def fake_load_dataset(path, config=None):
        calls.append((path, config))
        return DatasetDict({"train": split, "validation": split, "test": split})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    raw = TASKS[name].load_raw(DataArgs(max_train_samples=1))
    assert calls == [HUB_IDS[name]]
    assert set(raw) == {"train", "validation"} and len(raw["train"]) == 1


def test_hub_overrides(monkeypatch):
    calls = []
    monkeypatch.setattr(
        datasets, "load_dataset", lambda path, config=None: calls.append((path, config)) or DatasetDict()
    )
    TASKS["wikitext"].load_raw(DataArgs(dataset_config="wikitext-2-raw-v1"))
    TASKS["sst2"].load_raw(DataArgs(dataset_name="glue", dataset_config="sst2"))
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1"), ("glue", "sst2")]


def test_hub_unreachable_fails_fast_with_the_offline_command(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(HubUnreachableError) as err:
        TASKS["sst2"].load_raw(DataArgs())
    assert "adamoe finetune --task sst2 --model PATH --train-file train.tsv --validation-file dev.tsv" in str(
        err.value
    )
    assert isinstance(err.value, ConnectionError)  # callers catching ConnectionError still do
