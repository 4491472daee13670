"""What `--data` names, loaded as a `datasets.DatasetDict` (train, validation, and test when there is one) with the
same columns whatever the source: `sentence` (the text), `label` (the label id) and `domain` (CoLA's in/out, else "").

The sources: CoLA in its release layout or the GLUE layout (parsed here line by line, so a malformed row gets its file
and line number; the rows become a dataset directly, never through `datasets`' file patterns, where a folder named
`cola[1]` would be a glob, nor its csv cache, keyed on path and modification time, so data rewritten with its old
timestamp, as `tar` and `cp -p` leave it, loaded the old rows); GLUE through the hub (`glue` for CoLA, `glue/sst2`);
and a data set of one's own in CSV, TSV, JSON Lines or Parquet files (bertpack/tables.py).
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bertpack.errors import BertpackError, quiet_hub_retries
from bertpack.files import sha256_file
from bertpack.labels import COLA, Labels, listed

RELEASE_FILES = (
    "in_domain_train.tsv",
    "in_domain_dev.tsv",
    "out_of_domain_dev.tsv",
)  # train, then dev as GLUE orders it
# The 6 sources held out as CoLA's out-of-domain set (Warstadt et al. 2018, section 4.1).
OUT_OF_DOMAIN_SOURCES = frozenset({"c-05", "clc95", "j_71", "s_97", "swb04", "w_80"})
GLUE = "glue"


@dataclass(frozen=True)
class ColaFiles:
    """Where each split comes from; `validation` is in-domain dev then out-of-domain dev (as GLUE)."""

    train: Path
    validation: list[Path]
    layout: str  # "release" or "glue"


@dataclass(frozen=True)
class DataSpec:
    """What `--data` names and the columns to read from it (None: the defaults, or CoLA's fixed columns)."""

    data: str  # a folder, a data file, "glue" or "glue/TASK"
    text_column: str | None = None
    label_column: str | None = None

    def __str__(self) -> str:
        return self.data

    def record(self) -> dict[str, str | None]:
        """As a run's metrics.json and an export's manifest.json record it ("data_source")."""
        return {"data": self.data, "text_column": self.text_column, "label_column": self.label_column}

    @classmethod
    def from_record(cls, record: object) -> DataSpec | None:
        """A recorded data source (record(), or a run's recorded config), None when there is none."""
        if not isinstance(record, dict) or not isinstance(record.get("data"), str) or not record["data"]:
            return None
        text, label = record.get("text_column"), record.get("label_column")
        return cls(record["data"], text if isinstance(text, str) else None, label if isinstance(label, str) else None)


# A CoLA folder, a data set's folder or file, a hub name, or one of those with its columns
DataRef = str | Path | DataSpec


@dataclass(frozen=True)
class Loaded:
    """The splits (columns sentence, label, domain), the label space, the files read (for their hashes) and, for a data
    set of one's own, the line that says what was read."""

    splits: "datasets.DatasetDict"  # noqa: F821 - datasets is imported where it is used
    labels: Labels
    files: tuple[Path, ...] = ()
    text_column: str | None = None  # the columns read from a data set's files (None for CoLA and the hub)
    label_column: str | None = None
    summary: str | None = None


def as_spec(data: DataRef) -> DataSpec:
    return data if isinstance(data, DataSpec) else DataSpec(str(data))


def is_hub(data: DataRef) -> bool:
    """`glue` (CoLA) or `glue/TASK`: GLUE through the hub. A local folder of that name is written ./glue."""
    name = str(data)
    return name == GLUE or name.startswith(GLUE + "/")


def locate(data: str | Path) -> ColaFiles:
    """Find the CoLA files under `data` in the release layout (raw/…) or the GLUE layout (train.tsv, dev.tsv)."""
    root = Path(data)
    with _readable(root):
        if not root.exists():
            raise _missing(root)
        if not root.is_dir():
            raise BertpackError(f"--data {root} is a file; pass the folder that holds the CoLA TSV files")
        found = _find_cola(root)
    if found is None:
        raise BertpackError(f"no CoLA files in {root}: expected {COLA_LAYOUTS}")
    return found


COLA_LAYOUTS = (
    "raw/in_domain_train.tsv, raw/in_domain_dev.tsv and raw/out_of_domain_dev.tsv (release layout) or "
    "train.tsv and dev.tsv (GLUE layout)"
)


@contextlib.contextmanager
def _readable(root: Path) -> Iterator[None]:
    """An OSError in the body (e.g. a folder without read/search permission: is_file() raises instead of saying False)
    as one line."""
    try:
        yield
    except OSError as exc:
        raise BertpackError(
            f"--data {root}: cannot read {exc.filename or root} ({exc.strerror or exc}); fix its "
            "permissions (chmod a+rX) or pass another --data"
        ) from None


def _missing(root: Path) -> BertpackError:
    return BertpackError(
        f"--data {root} does not exist; pass the CoLA folder (the release, holding raw/, or "
        "GLUE's train.tsv and dev.tsv), a data set's folder (train and validation files: CSV, TSV, "
        "JSON Lines or Parquet), or --data glue when online"
    )


def _find_cola(root: Path, text_column: str | None = None) -> ColaFiles | None:
    """The CoLA files in the folder `root`, or None when it holds none (a partial release is an error)."""
    releases = [[base / name for name in RELEASE_FILES] for base in (root / "raw", root)]
    for release in releases:
        if all(p.is_file() for p in release):
            return ColaFiles(train=release[0], validation=release[1:], layout="release")
    glue = [root / "train.tsv", root / "dev.tsv"]
    if all(p.is_file() for p in glue) and not _has_header(glue[0], text_column):
        return ColaFiles(train=glue[0], validation=[glue[1]], layout="glue")
    for release in releases:  # part of a release: name what is missing (or a link that leads nowhere)
        missing = [p for p in release if not p.is_file()]
        if len(missing) < len(release):
            what = ", ".join(f"{p} ({'a broken link' if p.is_symlink() else 'missing'})" for p in missing)
            raise BertpackError(
                f"--data {root}: the CoLA release is incomplete: {what}; unpack the whole release again"
            )
    return None


def _has_header(path: Path, text_column: str | None) -> bool:
    """A train.tsv whose first line names the text column is a data set's table (SST-2 from GLUE has one); CoLA's
    files have no header."""
    from bertpack.tables import TEXT_COLUMNS

    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            first = fh.readline().rstrip("\r\n").split("\t")
    except OSError:
        return False  # read as CoLA, whose reader names the file and the problem
    return bool(set(first) & ({text_column} if text_column else set(TEXT_COLUMNS)))


def _source(spec: DataSpec) -> ColaFiles | "TableFiles":  # noqa: F821
    """Which kind of local data `spec` names: CoLA's files or a data set's files; anything else is an error."""
    from bertpack.tables import FORMATS, find_files, split_files

    root = Path(spec.data)
    with _readable(root):
        if not root.exists():
            raise _missing(root)
        if root.is_file():
            if root.name in RELEASE_FILES:
                raise BertpackError(f"--data {root} is a file; pass the folder that holds the CoLA TSV files")
            if root.suffix.lower() not in FORMATS:
                kind = root.suffix or "(no extension)"
                raise BertpackError(
                    f"--data {root}: unknown file type {kind!r}; pass a CoLA folder, or a data set's "
                    f"folder or train file ({', '.join(FORMATS)})"
                )
            return find_files(root)
        found = _find_cola(root, spec.text_column)
        if found is not None:
            return found
        if any(split_files(root).values()):
            return find_files(root)
    raise BertpackError(
        f"no CoLA files and no data set in {root}: expected {COLA_LAYOUTS}, or a data set's train file "
        f"(train{'/'.join(FORMATS)}) beside its validation.* or dev.* file"
    )


def read_tsv(path: Path) -> list[tuple[str, int, str]]:
    """One CoLA TSV (4 tab-separated columns, label 0/1, a sentence), checked row by row: (source, label, sentence)."""
    rows: list[tuple[str, int, str]] = []
    lineno = 0
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a BOM is not part of the first source code
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            for row in reader:
                lineno = reader.line_num
                if not row or row == [""]:
                    continue
                if len(row) != 4:
                    raise BertpackError(
                        f"{path}:{lineno}: expected 4 tab-separated columns (source, label, star, sentence), found "
                        f"{len(row)}; is this a CoLA TSV file?"
                    )
                if row[1] not in ("0", "1"):
                    header = " (a header row? CoLA TSV files have none)" if row[1].strip().lower() == "label" else ""
                    raise BertpackError(f"{path}:{lineno}: label must be 0 or 1, found {row[1]!r}{header}")
                if not row[3].strip():
                    raise BertpackError(f"{path}:{lineno}: the sentence column is empty")
                rows.append((row[0], int(row[1]), row[3]))
    except csv.Error as exc:  # e.g. a line over the csv module's field limit: not a CoLA file
        raise BertpackError(f"{path}:{lineno + 1}: {exc}; is this a CoLA TSV file?") from None
    except UnicodeDecodeError as exc:
        raise BertpackError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); pass the CoLA TSV files"
        ) from None
    except OSError as exc:  # unreadable (permissions), a folder named like the file, an I/O error
        raise BertpackError(
            f"{path}: cannot read it ({exc.strerror or exc}); fix its permissions (chmod a+r) or pass another --data"
        ) from None
    if not rows:
        raise BertpackError(f"{path} holds no rows; CoLA TSV files have one sentence per line")
    return rows


def _dataset(rows: list[tuple[str, int, str]]):
    """Rows as a dataset with the columns every stage reads: sentence, label, domain (from the source code)."""
    domains = ["out" if r[0] in OUT_OF_DOMAIN_SOURCES else "in" for r in rows]
    return _columns([r[2] for r in rows], [r[1] for r in rows], domains)


def _columns(sentences: list[str], labels: list[int], domains: list[str]):
    """The columns every stage reads: sentence, label (the label id), domain (CoLA's in/out, else "")."""
    import datasets

    return datasets.Dataset.from_dict(
        {"sentence": sentences, "label": labels, "domain": domains},
        features=datasets.Features(
            sentence=datasets.Value("string"), label=datasets.Value("int64"), domain=datasets.Value("string")
        ),
    )


def load_data(data: DataRef, limit: int | None = None) -> Loaded:
    """Load what `--data` names: a `datasets.DatasetDict` with train and validation (and test, when a data set has one),
    columns sentence, label (the id in `labels`) and domain, with the label space. `limit` keeps the first N training
    rows (quick runs); the other splits are always whole, and the label space is always the whole training split's."""
    spec = as_spec(data)
    if is_hub(spec):
        return _load_hub(spec, limit)
    source = _source(spec)
    if isinstance(source, ColaFiles):
        if spec.text_column or spec.label_column:
            raise BertpackError(
                f"--data {spec.data} is CoLA, whose TSV files have fixed columns; --text-column and "
                "--label-column are for a data set's CSV, TSV, JSON Lines or Parquet files with a "
                "header"
            )
        return Loaded(load_cola(spec.data, limit), COLA, (source.train, *source.validation))
    from bertpack.tables import read_tables

    table = read_tables(source, spec.text_column, spec.label_column)
    import datasets

    splits = datasets.DatasetDict()
    for split, texts in table.texts.items():
        ids = table.label_ids[split]
        if split == "train":
            texts, ids = texts[:limit], ids[:limit]  # limit None: every row
        splits[split] = _columns(texts, ids, [""] * len(ids))
    files = table.files.splits()
    counts = ", ".join(f"{path.name} {len(table.texts[split])} rows" for split, path in files.items())
    said = {kind: " (detected)" if kind in table.detected else "" for kind in ("text", "label")}
    columns = f"text column {table.text_column!r}{said['text']}, label column {table.label_column!r}{said['label']}"
    classes = f"{table.labels.count} labels: {listed(table.labels.names)}"
    summary = f"data: {files['train'].parent} ({counts}); {columns}; {classes}"
    return Loaded(splits, table.labels, tuple(files.values()), table.text_column, table.label_column, summary)


def load_cola(data: str | Path, limit: int | None = None):
    """Return a `datasets.DatasetDict` with `train` and `validation` (columns sentence, label, domain).

    `limit` keeps the first N training rows (quick runs); validation is always whole.
    """
    if str(data) == GLUE:
        return _load_glue(limit)
    files = locate(data)
    validation = [row for p in files.validation for row in read_tsv(p)]  # every file is read: a bad dev file fails too
    train = read_tsv(files.train)[:limit]  # limit None: every row
    import datasets

    return datasets.DatasetDict(train=_dataset(train), validation=_dataset(validation))


def hold_out(train, fraction: float, seed: int):
    """Split a loaded training set into (train, selection, selection_indices): a seeded, label-stratified
    `fraction` of its rows (at least one per label) for choosing the checkpoint, the decision threshold and the
    temperature, so the validation split is scored only once. `datasets`' own stratified split, on any loader's rows."""
    import datasets

    labels = train["label"]
    if not labels:
        raise BertpackError("the training split is empty; check --data and --limit")
    size = max(round(fraction * len(labels)), len(set(labels)))
    feature = train.features["label"]
    rows = train.add_column("_row", list(range(len(labels))))
    if not isinstance(feature, datasets.ClassLabel):  # stratify_by_column needs a ClassLabel column
        rows = rows.cast_column("label", datasets.ClassLabel(num_classes=max(labels) + 1))
    try:
        parts = rows.train_test_split(test_size=size, stratify_by_column="label", seed=seed)
    except ValueError as exc:  # a label with a single row, or too few rows to hold one of each out
        raise BertpackError(
            f"cannot hold out a label-stratified selection split of {size} of the {len(labels)} training rows "
            f"({exc}); raise --limit, or pass --select-on dev"
        ) from None
    picked = sorted(parts["test"]["_row"])
    return train.select(sorted(parts["train"]["_row"])), train.select(picked), picked


def _load_glue(limit: int | None):
    import datasets

    try:
        with quiet_hub_retries():
            glue = datasets.load_dataset("nyu-mll/glue", "cola")
    except Exception as exc:  # noqa: BLE001 - the hub raises many types; all mean "not reachable"
        from bertpack.models import offline_hint

        raise BertpackError(
            f"could not load GLUE CoLA from the hub ({type(exc).__name__}); pass --data with a local CoLA folder "
            f"instead{offline_hint()}"
        ) from None
    train = glue["train"]
    if limit is not None:
        train = train.select(range(min(limit, len(train))))
    # GLUE validation = in_domain_dev (527 rows) followed by out_of_domain_dev (516 rows); no source column.
    val = glue["validation"].map(lambda _, idx: {"domain": "in" if idx < 527 else "out"}, with_indices=True)
    return datasets.DatasetDict(
        train=train.add_column("domain", ["in"] * len(train)).select_columns(["sentence", "label", "domain"]),
        validation=val.select_columns(["sentence", "label", "domain"]),
    )


# GLUE's tasks on one sentence (the others classify sentence pairs), and their names in messages.
GLUE_SINGLE = {"cola": "CoLA", "sst2": "SST-2"}
GLUE_PAIRS = ("mnli", "mrpc", "qnli", "qqp", "rte", "stsb", "wnli", "ax")


def _load_hub(spec: DataSpec, limit: int | None) -> Loaded:
    """GLUE through the hub: `glue` or `glue/cola` (CoLA, with its domains), `glue/sst2`. The hub's test splits have no
    labels, so they are not loaded."""
    task = spec.data.partition("/")[2] or "cola"
    tasks = " or ".join(f"glue/{t}" for t in GLUE_SINGLE)
    if task in GLUE_PAIRS:
        raise BertpackError(
            f"--data {spec.data}: GLUE's {task} classifies sentence pairs; bertpack classifies one "
            f"text: pass {tasks}, or a data set's own files"
        )
    if task not in GLUE_SINGLE:
        raise BertpackError(f"--data {spec.data}: no GLUE task {task!r} on one sentence; pass {tasks}")
    if spec.text_column or spec.label_column:
        raise BertpackError(
            f"--data {spec.data} has fixed columns (sentence, label); --text-column and "
            "--label-column are for a data set's own files"
        )
    if task == "cola":
        return Loaded(_load_glue(limit), COLA)
    import datasets

    try:
        with quiet_hub_retries():
            glue = datasets.load_dataset("nyu-mll/glue", task)
    except Exception as exc:  # noqa: BLE001 - the hub raises many types; all mean "not reachable"
        from bertpack.models import offline_hint

        raise BertpackError(
            f"could not load GLUE {GLUE_SINGLE[task]} from the hub ({type(exc).__name__}); pass --data "
            "with a local copy of its files instead (train and validation: CSV, TSV, JSON Lines or "
            f"Parquet){offline_hint()}"
        ) from None
    labels = Labels(tuple(glue["train"].features["label"].names))  # the hub's ClassLabel: its names in its id order
    train = glue["train"].select(range(min(limit, len(glue["train"])))) if limit is not None else glue["train"]
    splits = datasets.DatasetDict(
        {
            name: _columns(list(ds["sentence"]), list(ds["label"]), [""] * len(ds))
            for name, ds in (("train", train), ("validation", glue["validation"]))
        }
    )
    return Loaded(splits, labels)


def file_hashes(data: DataRef) -> dict[str, str]:
    """sha256 of each data file used, for metrics.json (empty for the hub)."""
    if is_hub(data):
        return {}
    source = _source(as_spec(data))
    paths = [source.train, *source.validation] if isinstance(source, ColaFiles) else list(source.splits().values())
    return {str(p): sha256_file(p) for p in paths}


def validation_sentences(data: DataRef, labels: Sequence[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """The whole validation split as plain lists (sentences, label ids, domains): for export and bench. With `labels`
    (a model's label names in id order) the ids are that model's (model_label_ids)."""
    loaded = load_data(data, limit=1)
    val = loaded.splits["validation"]
    ids = list(val["label"])
    if labels is not None:
        ids = model_label_ids(ids, loaded.labels, labels, data)
    return list(val["sentence"]), ids, list(val["domain"])


def model_label_ids(ids: Sequence[int], data_labels: Labels, model_labels: Sequence[str], data: DataRef) -> list[int]:
    """The data's label ids as the model's, matched by name; CoLA's 0/1 stay 0/1 for a 2-label model with
    transformers' default names (LABEL_0, LABEL_1). A label the model lacks is an error: the wrong data."""
    model = tuple(model_labels)
    if model == data_labels.names or (data_labels.cola and model == ("LABEL_0", "LABEL_1")):
        return list(ids)
    index = {name: i for i, name in enumerate(model)}
    unknown = [data_labels.names[i] for i in sorted(set(ids)) if data_labels.names[i] not in index]
    if unknown:
        raise BertpackError(
            f"--data {data}: its labels ({listed(data_labels.names)}) are not the model's "
            f"({listed(model)}): {unknown[0]!r} is no label of the model; pass the data the model was "
            "trained on"
        )
    return [index[data_labels.names[i]] for i in ids]


def default_data_dir() -> Path | None:
    """The CoLA copy shared beside the project (../shared/data/cola), when it is there."""
    here = Path(__file__).resolve().parent.parent
    candidate = here.parent / "shared" / "data" / "cola"
    return candidate if (candidate / "raw" / "in_domain_train.tsv").is_file() else None


def data_source(
    data: DataRef | None, command: str, labels: Sequence[str] | None = None, recorded: DataSpec | None = None
) -> DataRef:
    """The data export, verify --parity and bench read: --data (a folder, a data set's train file, `glue` or
    `glue/TASK`), read with the columns the run recorded; without it, for a model whose labels (`labels`, in id order)
    are not CoLA's, the data the run was trained on (`recorded`), else the shared CoLA copy. Checked now, so a wrong
    folder, bad rows, labels the model lacks or an unreachable hub are one line before any slow work."""
    model = Labels(tuple(labels)) if labels is not None else COLA
    if data is None and not model.cola:
        if recorded is None:
            raise BertpackError(
                f"no data for {command}: the model's labels ({listed(model.names)}) are not CoLA's and "
                "its run records no --data; pass --data with the data the model was trained on"
            )
        spec = recorded
    elif data is None:
        folder = default_data_dir()
        if folder is None:
            raise BertpackError(
                f"no CoLA data for {command}: pass --data with the CoLA folder (release or GLUE "
                "layout), or --data glue when online"
            )
        locate(folder)
        return Path(folder).resolve()
    elif isinstance(data, DataSpec):
        spec = data
    else:
        spec = DataSpec(str(data), *((recorded.text_column, recorded.label_column) if recorded else ()))
    if spec.data == GLUE:
        model_label_ids([0, 1], COLA, model.names, spec.data)
        load_cola(GLUE, limit=1)  # the hub's download is cached: the command's own load reads it from disk
        return GLUE
    if not is_hub(spec) and isinstance(_source(spec), ColaFiles):
        model_label_ids([0, 1], COLA, model.names, spec.data)
        return Path(spec.data).resolve()  # a folder named glue, given as ./glue, stays a folder
    loaded = load_data(spec, limit=1)
    val = loaded.splits["validation"]
    model_label_ids(val["label"], loaded.labels, model.names, spec.data)
    if is_hub(spec):
        return spec.data
    path = str(Path(spec.data).resolve())
    if spec.text_column or spec.label_column:  # columns given or recorded: carried with the path
        return DataSpec(path, loaded.text_column, loaded.label_column)
    return Path(path)
