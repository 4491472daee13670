"""A data set of one's own: CSV, TSV, JSON Lines or Parquet files with a text column and a label column.

The files are parsed by `datasets`' own csv, json and parquet builders; every row is then checked here, so a bad row
is one error naming its file and row. Each file is read into memory with a throwaway cache folder: `datasets`' cache is
keyed on path and modification time, so a file rewritten with its old timestamp (tar, cp -p) would load its old rows,
and paths are passed escaped, since `datasets` reads them as glob patterns (a folder named `data[1]` would be one).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bertpack.errors import BertpackError
from bertpack.labels import MAX_CLASSES, Labels, label_name, listed, sorted_labels

# extension -> (datasets builder, what the file must be)
FORMATS = {
    ".csv": ("csv", "CSV"),
    ".tsv": ("csv", "TSV (tab-separated)"),
    ".jsonl": ("json", "JSON Lines"),
    ".json": ("json", "JSON (lines or a list of records)"),
    ".parquet": ("parquet", "Parquet"),
}
SPLIT_FILES = {"train": ("train",), "validation": ("validation", "dev"), "test": ("test",)}  # file stems per split
TEXT_COLUMNS = ("text", "sentence")  # the text column when --text-column is not given: the first one present
LABEL_COLUMN = "label"


@dataclass(frozen=True)
class TableFiles:
    """A data set's files: train, validation (validation.* or dev.*), and test when there is one."""

    train: Path
    validation: Path
    test: Path | None = None

    def splits(self) -> dict[str, Path]:
        named = (("train", self.train), ("validation", self.validation), ("test", self.test))
        return {name: path for name, path in named if path}


@dataclass(frozen=True)
class Table:
    """The checked rows of every split: texts and label ids, the label space, and the columns they were read from."""

    texts: dict[str, list[str]]
    label_ids: dict[str, list[int]]
    labels: Labels
    files: TableFiles
    text_column: str
    label_column: str
    detected: tuple[str, ...]  # the columns chosen by default rather than by an option


def split_files(folder: Path) -> dict[str, list[Path]]:
    """The data files in `folder` per split: train.*, validation.* or dev.*, test.* with a known extension."""
    found: dict[str, list[Path]] = {}
    for split, stems in SPLIT_FILES.items():
        found[split] = sorted(path for stem in stems for ext in FORMATS if (path := folder / f"{stem}{ext}").is_file())
    return found


def find_files(data: Path) -> TableFiles:
    """The files of the data set `data` names: a folder holding train.* and validation.* (or dev.*), test.* optional;
    or its train.* file. Any other single file is refused: a run needs a validation split to pick its best checkpoint,
    report its figures and check its export, and one carved from the file at random would change with the seed."""
    folder = data if data.is_dir() else data.parent
    if data.is_file():
        if data.suffix.lower() not in FORMATS:
            raise BertpackError(
                f"--data {data}: unknown file type {data.suffix or '(no extension)'!r}; bertpack reads "
                f"{', '.join(FORMATS)} files"
            )
        if data.stem != "train":
            ext = data.suffix
            raise BertpackError(
                f"--data {data} is one file, and a run needs a validation split beside its training rows (to pick the "
                f"best checkpoint, report its figures and check the export): put the rows in train{ext} and "
                f"validation{ext} (or dev{ext}) in one folder and pass --data with that folder"
            )
    found = split_files(folder)
    for split, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            raise BertpackError(f"--data {folder} holds {len(paths)} {split} files ({names}); keep one per split")
    if data.is_file() and found["train"] != [data]:  # train.txt and the like
        raise BertpackError(
            f"--data {data}: unknown file type {data.suffix!r}; bertpack reads {', '.join(FORMATS)} files"
        )
    if not found["train"]:
        raise BertpackError(f"--data {folder}: no train file (train{'/'.join(FORMATS)}) beside its other files")
    if not found["validation"]:
        test = found["test"] and f" ({found['test'][0].name} is the held-out test split, not used to choose anything)"
        raise BertpackError(
            f"--data {folder}: no validation file beside {found['train'][0].name}{test or ''}: add "
            "validation.* or dev.* (the rows a run picks its best checkpoint on and the export checks "
            "its models on)"
        )
    return TableFiles(train=found["train"][0], validation=found["validation"][0], test=(found["test"] or [None])[0])


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bars and no log lines of `datasets` while it reads a file: a file it cannot parse becomes this
    module's one error line, not a logged traceback beside it."""
    import datasets

    bars_were_off, level = datasets.are_progress_bars_disabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


def read_file(path: Path):
    """One data file as a `datasets.Dataset`, held in memory; a file its builder cannot parse is one error line."""
    import datasets

    builder, kind = FORMATS[path.suffix.lower()]
    options: dict = {}
    if builder == "csv":
        # Only an empty cell is a missing value: pandas would also read the text "NA", "null" or "None" as missing.
        options = {"keep_default_na": False, "encoding": "utf-8-sig"}
        if path.suffix.lower() == ".tsv":  # tab-separated text carries quotes as they are (CoLA and GLUE do)
            options.update(delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        with open(path, "rb") as fh:
            if not fh.read(1):
                raise BertpackError(f"{path} is empty; it needs a header row and one row per text")
    except OSError as exc:
        raise BertpackError(
            f"{path}: cannot read it ({exc.strerror or exc}); fix its permissions (chmod a+r) or pass another --data"
        ) from None
    with tempfile.TemporaryDirectory(prefix="bertpack-data-") as cache, quiet_datasets():
        try:
            return datasets.load_dataset(
                builder,
                data_files={"train": glob.escape(str(path))},
                split="train",
                cache_dir=cache,
                keep_in_memory=True,
                **options,
            )
        except Exception as exc:  # noqa: BLE001 - pandas, pyarrow and datasets each raise their own types
            raise BertpackError(
                f"{path}: not a readable {kind} file ({_root_cause(exc)}); check that it is {kind}, "
                "as its extension says"
            ) from None


def _root_cause(exc: BaseException) -> str:
    """The innermost error of the chain `datasets` wraps a parser's error in, as one short line."""
    seen = exc
    while seen.__cause__ is not None:
        seen = seen.__cause__
    if isinstance(seen, UnicodeDecodeError):
        return f"not UTF-8 text: {seen.reason} at byte {seen.start}"
    lines = str(seen).strip().splitlines()
    return f"{type(seen).__name__}: {lines[0][:200]}" if lines else type(seen).__name__


def read_tables(files: TableFiles, text_column: str | None = None, label_column: str | None = None) -> Table:
    """Read and check every split: the columns are present, every text is non-empty, every label is a class label,
    training holds 2 to MAX_CLASSES classes and the other splits only classes training has."""
    raw = {split: read_file(path) for split, path in files.splits().items()}
    text_col, label_col, detected = _columns(raw["train"], files.train, text_column, label_column)
    for split, path in files.splits().items():
        _check_columns(raw[split], path, text_col, label_col, text_column, label_column)
    paths = files.splits()
    texts = {split: _texts(ds, paths[split], text_col) for split, ds in raw.items()}
    names = {split: _label_names(ds, paths[split], label_col) for split, ds in raw.items()}
    labels = _class_label_names(raw["train"], label_col) or sorted_labels(names["train"])
    if labels.count < 2:
        raise BertpackError(
            f"{files.train}: the label column {label_col!r} holds one class ({labels.names[0]!r}) in "
            f"all its {len(names['train'])} rows; a classifier needs at least 2 (is --label-column the "
            "right column?)"
        )
    if labels.count > MAX_CLASSES:
        raise BertpackError(
            f"{files.train}: the label column {label_col!r} holds {labels.count} classes, over the "
            f"{MAX_CLASSES} bertpack takes; is --label-column the column of the labels (not of ids or "
            "texts)?"
        )
    ids = labels.label2id()
    for split in ("validation", "test"):
        for row, name in enumerate(names.get(split, [])):
            if name not in ids:
                raise BertpackError(
                    f"{paths[split]} row {row + 1}: label {name!r} never occurs in {files.train.name} "
                    f"(its labels: {listed(labels.names)}); fix the label or add training rows with it"
                )
    label_ids = {split: [ids[n] for n in names[split]] for split in raw}
    return Table(
        texts=texts,
        label_ids=label_ids,
        labels=labels,
        files=files,
        text_column=text_col,
        label_column=label_col,
        detected=detected,
    )


def _columns(train, path: Path, text_column: str | None, label_column: str | None) -> tuple[str, str, tuple[str, ...]]:
    found = train.column_names
    detected = []
    text = text_column
    if text is None:
        text = next((c for c in TEXT_COLUMNS if c in found), None)
        if text is None:
            defaults = " or ".join(map(repr, TEXT_COLUMNS))
            raise BertpackError(
                f"{path} has no column {defaults} (columns found: {listed(found)}); pass --text-column "
                "with the column that holds the text"
            )
        detected.append("text")
    if label_column is None:
        detected.append("label")
    return text, label_column or LABEL_COLUMN, tuple(detected)


def _check_columns(
    ds, path: Path, text_col: str, label_col: str, text_column: str | None, label_column: str | None
) -> None:
    """Both columns are in this split's file, and the text column holds text."""
    found = listed(ds.column_names)
    for column, given, option, what in (
        (text_col, text_column, "--text-column", "text"),
        (label_col, label_column, "--label-column", "labels"),
    ):
        if column not in ds.column_names:
            how = f"{option} {column}" if given else f"the default {option}"
            raise BertpackError(
                f"{path} has no column {column!r} ({how}; columns found: {found}); pass {option} with "
                f"the column that holds the {what}"
            )
    if text_col == label_col:
        raise BertpackError(
            f"--text-column and --label-column both name {text_col!r}; the text and the label are two columns"
        )
    dtype = getattr(ds.features[text_col], "dtype", None)
    if dtype is not None and dtype not in ("string", "large_string"):
        raise BertpackError(
            f"{path}: the text column {text_col!r} holds {dtype} values, not text; pass --text-column "
            f"with the column that holds the text (columns found: {found})"
        )


def _texts(ds, path: Path, column: str) -> list[str]:
    texts = ds[column]
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            what = "empty" if text is None else f"not text ({type(text).__name__} {text!r:.40})"
            raise BertpackError(f"{path} row {row + 1}: the text column {column!r} is {what}; every row needs its text")
        if not text.strip():
            raise BertpackError(f"{path} row {row + 1}: the text column {column!r} is empty; every row needs its text")
    if not texts:
        raise BertpackError(f"{path} holds no rows; it needs one row per text")
    return texts


def _label_names(ds, path: Path, column: str) -> list[str]:
    import datasets

    feature = ds.features[column]
    values = ds[column]
    if isinstance(feature, datasets.ClassLabel):  # the data names its classes (a Parquet file written by `datasets`)
        for row, value in enumerate(values):
            if not 0 <= value < feature.num_classes:
                raise BertpackError(
                    f"{path} row {row + 1}: the label column {column!r} holds {value}, no class of its "
                    f"{feature.num_classes} ({listed(feature.names)}); every row needs its label"
                )
        return [feature.names[v] for v in values]
    names = []
    for row, value in enumerate(values):
        name = label_name(value)
        if name is None:
            empty = value is None or (isinstance(value, str) and not value.strip())
            what = "empty" if empty else f"{value!r:.40}, not a class label"
            raise BertpackError(
                f"{path} row {row + 1}: the label column {column!r} is {what}; labels are integers or names"
            )
        names.append(name)
    return names


def _class_label_names(ds, column: str) -> Labels | None:
    """The class names a ClassLabel column declares, in its own id order, or None."""
    import datasets

    feature = ds.features[column]
    return Labels(tuple(feature.names)) if isinstance(feature, datasets.ClassLabel) else None
