"""CoLA loading: the official release layout, the GLUE layout, or GLUE through the hub.

Every file is parsed here, line by line (so a malformed row gets its file and line number in the error), and the rows
become a `datasets.Dataset` directly: the paths never go through `datasets`' file patterns (a folder named
`cola[1]` would be a glob there) nor its csv cache (keyed on path and modification time, so data rewritten with its
old timestamp, as `tar` and `cp -p` leave it, loaded the old rows).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from bertpack.errors import BertpackError, quiet_hub_retries
from bertpack.files import sha256_file

RELEASE_FILES = ("in_domain_train.tsv", "in_domain_dev.tsv", "out_of_domain_dev.tsv")  # train, then dev as GLUE orders it
# The 6 sources held out as CoLA's out-of-domain set (Warstadt et al. 2018, section 4.1).
OUT_OF_DOMAIN_SOURCES = frozenset({"c-05", "clc95", "j_71", "s_97", "swb04", "w_80"})
GLUE = "glue"


@dataclass(frozen=True)
class ColaFiles:
    """Where each split comes from; `validation` is in-domain dev then out-of-domain dev (as GLUE)."""

    train: Path
    validation: list[Path]
    layout: str  # "release" or "glue"


def locate(data: str | Path) -> ColaFiles:
    """Find the CoLA files under `data` in the release layout (raw/…) or the GLUE layout (train.tsv, dev.tsv)."""
    root = Path(data)
    try:
        return _locate(root)
    except OSError as exc:  # e.g. a folder without read/search permission: is_file() raises instead of saying False
        raise BertpackError(f"--data {root}: cannot read {exc.filename or root} ({exc.strerror or exc}); fix its permissions (chmod a+rX) or pass another --data") from None


def _locate(root: Path) -> ColaFiles:
    if not root.exists():
        raise BertpackError(f"CoLA data folder {root} does not exist; pass --data with the folder of the CoLA release (holding raw/) or of GLUE CoLA (train.tsv, dev.tsv), or --data glue when online")
    if not root.is_dir():
        raise BertpackError(f"--data {root} is a file; pass the folder that holds the CoLA TSV files")
    releases = [[base / name for name in RELEASE_FILES] for base in (root / "raw", root)]
    for release in releases:
        if all(p.is_file() for p in release):
            return ColaFiles(train=release[0], validation=release[1:], layout="release")
    glue = [root / "train.tsv", root / "dev.tsv"]
    if all(p.is_file() for p in glue):
        return ColaFiles(train=glue[0], validation=[glue[1]], layout="glue")
    for release in releases:  # part of a release: name what is missing (or a link that leads nowhere)
        missing = [p for p in release if not p.is_file()]
        if len(missing) < len(release):
            what = ", ".join(f"{p} ({'a broken link' if p.is_symlink() else 'missing'})" for p in missing)
            raise BertpackError(f"--data {root}: the CoLA release is incomplete: {what}; unpack the whole release again")
    raise BertpackError(
        f"no CoLA files in {root}: expected raw/in_domain_train.tsv, raw/in_domain_dev.tsv and "
        "raw/out_of_domain_dev.tsv (release layout) or train.tsv and dev.tsv (GLUE layout)"
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
                    raise BertpackError(f"{path}:{lineno}: expected 4 tab-separated columns (source, label, star, sentence), found {len(row)}; is this a CoLA TSV file?")
                if row[1] not in ("0", "1"):
                    header = " (a header row? CoLA TSV files have none)" if row[1].strip().lower() == "label" else ""
                    raise BertpackError(f"{path}:{lineno}: label must be 0 or 1, found {row[1]!r}{header}")
                if not row[3].strip():
                    raise BertpackError(f"{path}:{lineno}: the sentence column is empty")
                rows.append((row[0], int(row[1]), row[3]))
    except csv.Error as exc:  # e.g. a line over the csv module's field limit: not a CoLA file
        raise BertpackError(f"{path}:{lineno + 1}: {exc}; is this a CoLA TSV file?") from None
    except UnicodeDecodeError as exc:
        raise BertpackError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); pass the CoLA TSV files") from None
    except OSError as exc:  # unreadable (permissions), a folder named like the file, an I/O error
        raise BertpackError(f"{path}: cannot read it ({exc.strerror or exc}); fix its permissions (chmod a+r) or pass another --data") from None
    if not rows:
        raise BertpackError(f"{path} holds no rows; CoLA TSV files have one sentence per line")
    return rows


def _dataset(rows: list[tuple[str, int, str]]):
    """Rows as a dataset with the columns every stage reads: sentence, label, domain (from the source code)."""
    import datasets

    return datasets.Dataset.from_dict(
        {"sentence": [r[2] for r in rows], "label": [r[1] for r in rows],
         "domain": ["out" if r[0] in OUT_OF_DOMAIN_SOURCES else "in" for r in rows]},
        features=datasets.Features(sentence=datasets.Value("string"), label=datasets.Value("int64"), domain=datasets.Value("string")),
    )


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
        raise BertpackError(f"cannot hold out a label-stratified selection split of {size} of the {len(labels)} training rows "
                            f"({exc}); raise --limit, or pass --select-on dev") from None
    picked = sorted(parts["test"]["_row"])
    return train.select(sorted(parts["train"]["_row"])), train.select(picked), picked


def _load_glue(limit: int | None):
    import datasets

    try:
        with quiet_hub_retries():
            glue = datasets.load_dataset("nyu-mll/glue", "cola")
    except Exception as exc:  # noqa: BLE001 - the hub raises many types; all mean "not reachable"
        from bertpack.models import offline_hint

        raise BertpackError(f"could not load GLUE CoLA from the hub ({type(exc).__name__}); pass --data with a local CoLA folder "
                            f"instead{offline_hint()}") from None
    train = glue["train"]
    if limit is not None:
        train = train.select(range(min(limit, len(train))))
    # GLUE validation = in_domain_dev (527 rows) followed by out_of_domain_dev (516 rows); no source column.
    val = glue["validation"].map(lambda _, idx: {"domain": "in" if idx < 527 else "out"}, with_indices=True)
    return datasets.DatasetDict(train=train.add_column("domain", ["in"] * len(train)).select_columns(["sentence", "label", "domain"]),
                                validation=val.select_columns(["sentence", "label", "domain"]))


def file_hashes(data: str | Path) -> dict[str, str]:
    """sha256 of each data file used, for metrics.json (empty for the hub)."""
    if str(data) == GLUE:
        return {}
    files = locate(data)
    return {str(p): sha256_file(p) for p in [files.train, *files.validation]}


def validation_sentences(data: str | Path) -> tuple[list[str], list[int], list[str]]:
    """The whole validation split as plain lists (sentences, labels, domains): for export and bench."""
    val = load_cola(data, limit=1)["validation"]
    return list(val["sentence"]), list(val["label"]), list(val["domain"])


def default_data_dir() -> Path | None:
    """The CoLA copy shared beside the project (../shared/data/cola), when it is there."""
    here = Path(__file__).resolve().parent.parent
    candidate = here.parent / "shared" / "data" / "cola"
    return candidate if (candidate / "raw" / "in_domain_train.tsv").is_file() else None


def data_source(data: str | Path | None, command: str) -> str | Path:
    """The CoLA that export, verify --parity and bench read: --data (a folder, or `glue` for the hub), else the
    shared copy. Checked now, so a wrong folder or an unreachable hub is one line before any slow work."""
    if data is not None and str(data) == GLUE:
        load_cola(GLUE, limit=1)  # the hub's download is cached: the command's own load reads it from disk
        return GLUE
    folder = data or default_data_dir()
    if folder is None:
        raise BertpackError(f"no CoLA data for {command}: pass --data with the CoLA folder (release or GLUE layout), or --data glue when online")
    locate(folder)
    return Path(folder).resolve()  # a folder named glue, given as ./glue, stays a folder
