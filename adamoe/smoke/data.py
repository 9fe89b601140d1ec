"""Tiny, learnable data for the six tasks, generated from templates and written in each task's real local format.

Every generator is a pure function of a `random.Random`, so the same seed gives the same files. The rules are
chosen so that a two-layer model reaches a clear metric within a few dozen optimizer steps:

| task | rule the model has to learn | file format (as `adamoe/tasks` reads it) |
|---|---|---|
| sst2 | the label is the polarity of the sentence's one sentiment adjective | GLUE TSV `sentence<TAB>label` |
| squad | the answer is the one colour word in the context | official nested SQuAD v1.1 JSON |
| wmt19 | a word-for-word German->English dictionary over fixed templates | JSONL `{"translation": {"de", "en"}}` |
| cnn_dailymail | the highlight is the article's first sentence | JSONL `{"id", "article", "highlights"}` |
| wikitext | sentences from a tiny grammar, WikiText-style headings and blank lines | raw text (`wiki.*.tokens`) |
| soda | greeting, question and answer turns from a small script | JSONL `{"dialogue": [turn, ...]}` |

`corpus(task, rows)` gives the strings a tokenizer for that task is trained on.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the story", "the ending", "the cast", "the music"]
POSITIVE = ["good", "great", "excellent", "wonderful", "superb", "brilliant", "lovely", "delightful"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "poor", "dreadful", "horrible"]
SST2_TEMPLATES = [
    "{subject} was {adj} .",
    "{subject} is really {adj} .",
    "i thought {subject} was {adj} overall .",
    "honestly , {subject} felt {adj} to me .",
    "we all agreed that {subject} was {adj} .",
]

NAMES = ["anna", "ben", "carla", "david", "emma", "felix", "greta", "hugo"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
OBJECTS = ["car", "hat", "bike", "lamp", "chair", "coat", "bag", "cup"]
PLACES = ["market", "shop", "station", "village", "harbour", "museum"]
FILLERS = [
    "it was a sunny day .",
    "the streets were busy .",
    "many people were waiting outside .",
    "later everyone went home .",
    "the weather changed in the evening .",
]

# German -> English, word for word, so a translation is the dictionary applied in order.
DE_NOUNS = {"hund": "dog", "katze": "cat", "haus": "house", "baum": "tree", "mann": "man", "vogel": "bird"}
DE_ADJECTIVES = {"rot": "red", "gross": "big", "klein": "small", "alt": "old", "neu": "new", "schnell": "fast"}
DE_VERBS = {"sieht": "sees", "mag": "likes", "hat": "has", "findet": "finds"}
DE_TEMPLATES = [
    ("der {n1} ist {a1} .", "the {n1} is {a1} ."),
    ("der {a1} {n1} {v} den {n2} .", "the {a1} {n1} {v} the {n2} ."),
    ("der {n1} {v} den {a2} {n2} .", "the {n1} {v} the {a2} {n2} ."),
]

TEAMS = ["the lions", "the tigers", "the eagles", "the sharks", "the wolves", "the bears"]
EVENTS = ["final", "cup", "derby", "league match", "semi final"]
DAYS = ["monday", "tuesday", "friday", "saturday", "sunday"]
NEWS_FILLERS = [
    "fans celebrated in the city centre .",
    "the coach said the game was hard .",
    "tickets were sold out weeks ago .",
    "the next match is in two weeks .",
    "police said the night was calm .",
    "the captain thanked the supporters .",
]

ANIMALS = ["cat", "dog", "bird", "fox", "horse", "mouse"]
VERBS = ["sat on", "looked at", "ran to", "slept near", "jumped over"]
THINGS = ["the mat", "the tree", "the river", "the house", "the fence", "the hill"]

GREETINGS = ["hello", "hi", "good morning", "hey"]
QUESTIONS = [
    ("how are you ?", ["i am fine , thank you .", "i am great , thanks for asking ."]),
    ("what did you do today ?", ["i went to the park .", "i worked all day ."]),
    ("do you like coffee ?", ["yes , i love coffee .", "no , i prefer tea ."]),
    ("where are you going ?", ["i am going home .", "i am going to the shop ."]),
]
CLOSINGS = ["that sounds nice .", "good to hear .", "see you later .", "have a nice day ."]


def sst2_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        label = rng.randrange(2)
        adj = rng.choice(POSITIVE if label else NEGATIVE)
        sentence = rng.choice(SST2_TEMPLATES).format(subject=rng.choice(SUBJECTS), adj=adj)
        rows.append({"sentence": sentence, "label": label})
    return rows


def squad_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Flat SQuAD rows (`id, title, context, question, answers`); `write_squad_json` nests them."""
    rows = []
    for i in range(n):
        name, colour, obj, place = rng.choice(NAMES), rng.choice(COLOURS), rng.choice(OBJECTS), rng.choice(PLACES)
        before, after = rng.sample(FILLERS, 2)
        fact = f"{name} bought a {colour} {obj} at the {place} ."
        context = " ".join([before, fact, after] if rng.random() < 0.5 else [fact, before, after])
        start = context.index(f" {colour} ") + 1
        rows.append(
            {
                "id": f"q{i:05d}",
                "title": place,
                "context": context,
                "question": f"what colour was the {obj} that {name} bought ?",
                "answers": {"text": [colour], "answer_start": [start]},
            }
        )
    return rows


def wmt19_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        de_template, en_template = rng.choice(DE_TEMPLATES)
        n1, n2 = rng.sample(sorted(DE_NOUNS), 2)
        a1, a2 = rng.choice(sorted(DE_ADJECTIVES)), rng.choice(sorted(DE_ADJECTIVES))
        v = rng.choice(sorted(DE_VERBS))
        de = de_template.format(n1=n1, n2=n2, a1=a1, a2=a2, v=v)
        en = en_template.format(
            n1=DE_NOUNS[n1], n2=DE_NOUNS[n2], a1=DE_ADJECTIVES[a1], a2=DE_ADJECTIVES[a2], v=DE_VERBS[v]
        )
        rows.append({"translation": {"de": de, "en": en}})
    return rows


def cnn_dailymail_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        winner, loser = rng.sample(TEAMS, 2)
        lead = f"{winner} beat {loser} in the {rng.choice(EVENTS)} on {rng.choice(DAYS)} ."
        article = " ".join([lead, *rng.sample(NEWS_FILLERS, 3)])
        rows.append({"id": f"a{i:05d}", "article": article, "highlights": lead})
    return rows


def wikitext_lines(rng: random.Random, n: int) -> list[str]:
    """`n` article lines in the `wiki.*.tokens` layout: a heading, blank lines, paragraphs of sentences."""
    lines = []
    while len(lines) < n:
        lines += ["", f" = The {rng.choice(ANIMALS).title()} = ", ""]
        for _ in range(rng.randint(2, 4)):
            sentences = [
                f"the {rng.choice(ANIMALS)} {rng.choice(VERBS)} {rng.choice(THINGS)} ."
                for _ in range(rng.randint(2, 4))
            ]
            lines.append(" " + " ".join(sentences) + " ")
    return lines[:n]


def soda_rows(rng: random.Random, n: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        a, b = rng.sample(NAMES, 2)
        question, answers = rng.choice(QUESTIONS)
        dialogue = [
            f"{rng.choice(GREETINGS)} {b} , {question}",
            f"{rng.choice(answers)} what about you , {a} ?",
            f"{rng.choice(answers)} {rng.choice(CLOSINGS)}",
        ]
        rows.append({"dialogue": dialogue})
    return rows


# ---- writers: each task's real local format ----


def write_tsv(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = ["sentence\tlabel"] + [f"{row['sentence']}\t{row['label']}" for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_squad_json(path: Path, rows: list[dict[str, Any]]) -> None:
    """The official nested layout: one article per title, one paragraph per context, one question each."""
    articles: dict[str, dict[str, Any]] = {}
    for row in rows:
        article = articles.setdefault(row["title"], {"title": row["title"], "paragraphs": []})
        answers = [
            {"text": text, "answer_start": start}
            for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"], strict=True)
        ]
        qa = {"id": row["id"], "question": row["question"], "answers": answers}
        article["paragraphs"].append({"context": row["context"], "qas": [qa]})
    path.write_text(json.dumps({"version": "1.1", "data": list(articles.values())}), encoding="utf-8")


def write_text(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# task -> (row generator, writer, file suffix)
GENERATORS: dict[str, tuple[Callable[[random.Random, int], list], Callable[[Path, list], None], str]] = {
    "sst2": (sst2_rows, write_tsv, ".tsv"),
    "squad": (squad_rows, write_squad_json, ".json"),
    "wmt19": (wmt19_rows, write_jsonl, ".jsonl"),
    "cnn_dailymail": (cnn_dailymail_rows, write_jsonl, ".jsonl"),
    "wikitext": (wikitext_lines, write_text, ".tokens"),
    "soda": (soda_rows, write_jsonl, ".jsonl"),
}


# task -> the strings of one generated row that its tokenizer sees
CORPUS: dict[str, Callable[[Any], list[str]]] = {
    "sst2": lambda row: [row["sentence"]],
    "squad": lambda row: [row["question"], row["context"]],
    "wmt19": lambda row: ["translate German to English: " + row["translation"]["de"], row["translation"]["en"]],
    "cnn_dailymail": lambda row: [row["article"]],
    "wikitext": lambda row: [row],
    "soda": lambda row: list(row["dialogue"]),
}


def corpus(task: str, rows: list) -> Iterator[str]:
    """Every string of `rows` that the task's tokenizer will see, for training that tokenizer."""
    texts = CORPUS[task]
    for row in rows:
        yield from texts(row)
