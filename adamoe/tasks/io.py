"""Reading task data from local files, with errors that say what was expected.

The Hub is the users' usual path; local files are how a task runs offline or on private data. Each task
declares a `Schema` (the columns it needs and one example row) and the file formats it reads. A file that
does not fit gets a `DataFormatError` naming the file, the columns found, and the expected schema with an
example row, so the fix is obvious without reading the code.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset


class DataFormatError(ValueError):
    """A local data file is empty, unreadable, or lacks the columns a task needs."""


class TaskInputError(ValueError):
    """A model or tokenizer that cannot do the task as configured (no EOS token, an example longer than the
    model's context, a head the model type lacks); the message says what to change."""


class HubUnreachableError(ConnectionError):
    """The Hugging Face Hub could not be reached and no local data files were given."""


@dataclass(frozen=True)
class Schema:
    """The columns a task reads, with one example row for error messages.

    Args:
        columns: Column names every row must have.
        example: One valid row, shown when a file does not fit.
        note: Extra format hint (e.g. "GLUE TSV with a header row").
    """

    columns: tuple[str, ...]
    example: dict[str, Any]
    note: str = ""
    text_columns: tuple[str, ...] = ()  # string columns that must mostly hold text (see `check_columns`)

    def describe(self) -> str:
        note = f" ({self.note})" if self.note else ""
        return f"columns {list(self.columns)}{note}, e.g. {json.dumps(self.example, ensure_ascii=False)}"


def _datasets() -> Any:
    import datasets  # imported by the readers, not at import time: `adamoe --help` needs no datasets

    return datasets


def _read_text(path: Path) -> Dataset:
    # Keep the line breaks and turn blank lines into "" exactly as the Hub's wikitext builder does, so a local
    # `wiki.*.tokens` file tokenizes to the same ids (and the same perplexity) as the Hub split.
    from datasets import Dataset

    lines = Dataset.from_text(str(path), keep_linebreaks=True)
    return lines.map(lambda batch: {"text": [line if line.strip() else "" for line in batch["text"]]}, batched=True)


def _read_delimited(path: Path, sep: str) -> Dataset:
    # TSV is read with QUOTE_NONE because GLUE TSVs hold bare quote characters inside sentences; CSV keeps
    # standard quoting, which is how commas inside a field are written. keep_default_na=False: sentences such
    # as "NA" or "null" must stay text, not become missing values.
    from datasets import Dataset

    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    with path.open(encoding="utf-8") as f:
        lines = [line for line in islice(f, 2) if line.strip()]
    if len(lines) < 2:  # a header alone; the csv builder would fail with an unhelpful message
        return Dataset.from_dict({column: [] for column in lines[0].rstrip("\r\n").split(sep)})
    return Dataset.from_csv(str(path), sep=sep, quoting=quoting, keep_default_na=False)


# Suffix -> reader. Nested schemas (SQuAD answers, WMT translation pairs) cannot live in CSV/TSV: a task that
# needs them leaves those suffixes out of its `formats` or reads flat columns instead (wmt19).
READERS: dict[str, Callable[[Path], Dataset]] = {
    ".json": lambda path: _datasets().Dataset.from_json(str(path)),
    ".jsonl": lambda path: _datasets().Dataset.from_json(str(path)),
    ".parquet": lambda path: _datasets().Dataset.from_parquet(str(path)),
    ".csv": lambda path: _read_delimited(path, ","),
    ".tsv": lambda path: _read_delimited(path, "\t"),
    ".txt": _read_text,
    ".tokens": _read_text,
    ".raw": _read_text,
}


def check_file(path: str | Path, formats: Sequence[str]) -> Path:
    """Checks that `path` exists, has a readable suffix and is not empty; returns it as a `Path`."""
    path = Path(path)
    if path.is_dir():
        raise DataFormatError(
            f"{path} is a folder; pass a data file (one of {', '.join(formats)}) to --train-file / --validation-file."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"Data file {path} does not exist; pass an existing file to --train-file / --validation-file."
        )
    if path.suffix not in formats:
        raise DataFormatError(f"{path}: unsupported file type {path.suffix!r}; this task reads {', '.join(formats)}.")
    with path.open("rb") as f:
        if not f.read(4096).strip():
            raise DataFormatError(f"{path} is empty: it needs rows in the task's format (see `adamoe tasks`).")
    return path


def read_rows(path: str | Path, schema: Schema, formats: Sequence[str]) -> Dataset:
    """Reads a local data file into a `Dataset` and checks it against `schema`.

    Args:
        path: The file; its suffix picks the reader (`READERS`).
        schema: Columns the rows must have, and an example row for the error message.
        formats: Suffixes this task accepts.

    Returns:
        The rows, with whatever extra columns the file has.

    Raises:
        FileNotFoundError: `path` does not exist.
        DataFormatError: Unsupported suffix, empty file, no rows, or missing columns.

    Example:
        ```python
        >>> schema = Schema(columns=("sentence", "label"), example={"sentence": "a gem", "label": 1})
        >>> read_rows("dev.tsv", schema, formats=(".tsv",)).column_names
        ['sentence', 'label']
        ```
    """
    path = check_file(path, formats)
    try:
        rows = READERS[path.suffix](path)
    except Exception as err:  # the readers raise pyarrow/pandas/json errors of many types
        cause = err.__cause__ or err  # datasets wraps the parser's error in a generic one
        raise DataFormatError(
            f"{path}: not readable as {path.suffix} ({cause}). Expected {schema.describe()}."
        ) from err
    return check_columns(rows, path, schema)


def check_columns(rows: Dataset, path: str | Path, schema: Schema) -> Dataset:
    """Raises `DataFormatError` when `rows` is empty or lacks a column of `schema`; returns `rows` otherwise."""
    if len(rows) == 0:
        raise DataFormatError(f"{path} has no rows. Expected {schema.describe()}.")
    missing = [column for column in schema.columns if column not in rows.column_names]
    if missing:
        raise DataFormatError(
            f"{path} is missing column(s) {missing}; found {rows.column_names}. Expected {schema.describe()}."
        )
    for column in schema.text_columns:
        blank = [i for i, value in enumerate(rows[column]) if not isinstance(value, str) or not value.strip()]
        # A few blank rows are data noise; a mostly blank column is a wrong file or a wrong column.
        if len(blank) * 2 > len(rows):
            raise DataFormatError(
                f"{path}: {len(blank)} of {len(rows)} rows have a blank {column!r} (e.g. rows {blank[:5]}, counting "
                f"from 0 after the header); the column must hold the text. Expected {schema.describe()}."
            )
    return rows
