"""Data sets beyond CoLA: CSV, TSV, JSON Lines and Parquet files read into the same splits as CoLA, their labels, every
bad-data error (file, row, problem), GLUE SST-2 through the hub, and the metrics of more than two classes."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from bertpack.data import DataSpec, data_source, load_data, validation_sentences
from bertpack.errors import BertpackError
from bertpack.labels import COLA, Labels, sorted_labels

_TICKETS = {
    "billing": ["I was charged twice for my plan", "Please refund my last payment", "My invoice shows the wrong price"],
    "bug": ["The app crashes when I open it", "I get an error when I save", "The export button does nothing"],
    "feature": ["Please add a dark mode", "Could you support single sign-on?", "I would like a calendar view"],
}
_REVIEWS = {
    1: ["A wonderful, moving film.", "Great acting and a clever plot.", "I loved every minute of it."],
    0: ["A dull and lifeless film.", "Terrible acting, a silly plot.", "I walked out after an hour."],
}


def write_tickets_csv(root: Path, train: int = 48, validation: int = 24, test: int = 0, seed: int = 0) -> Path:
    """A 3-class CSV data set (text, label: billing / bug / feature), labels as names."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("validation", validation), ("test", test)):
        if n:
            labels = [sorted(_TICKETS)[i % 3] for i in range(n)]
            rows = ["text,label"] + [f'"{rng.choice(_TICKETS[label])}",{label}' for label in labels]
            (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def write_reviews_jsonl(root: Path, train: int = 48, validation: int = 24, seed: int = 0) -> Path:
    """A binary JSON Lines data set (sentence, label: 0 / 1 integers), validation as dev.jsonl."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("dev", validation)):
        lines = [json.dumps({"sentence": rng.choice(_REVIEWS[i % 2]), "label": i % 2, "id": i}) for i in range(n)]
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


# ----------------------------------------------------------------------------- reading each format
def test_csv_folder_loads_with_its_labels_sorted(tmp_path: Path) -> None:
    root = write_tickets_csv(tmp_path / "tickets", test=12)
    loaded = load_data(root)
    assert loaded.labels == Labels(("billing", "bug", "feature")) and not loaded.labels.cola
    assert set(loaded.splits) == {"train", "validation", "test"}
    train = loaded.splits["train"]
    assert train.column_names == ["sentence", "label", "domain"] and len(train) == 48
    texts = [line.split('",')[0].strip('"') for line in (root / "train.csv").read_text().splitlines()[1:]]
    assert train["sentence"] == texts
    assert train["label"][:3] == [0, 1, 2] and set(train["domain"]) == {""}
    assert loaded.summary == (
        f"data: {root} (train.csv 48 rows, validation.csv 24 rows, test.csv 12 rows); text column 'text' "
        "(detected), label column 'label' (detected); 3 labels: billing, bug, feature"
    )
    assert [p.name for p in loaded.files] == ["train.csv", "validation.csv", "test.csv"]


def test_jsonl_train_file_finds_its_dev_file(tmp_path: Path) -> None:
    """--data may name the train file; dev.jsonl beside it is the validation split; integer labels keep their order."""
    root = write_reviews_jsonl(tmp_path / "reviews")
    loaded = load_data(root / "train.jsonl")
    assert loaded.labels.names == ("0", "1")
    assert loaded.splits["train"]["label"][:4] == [0, 1, 0, 1] and len(loaded.splits["validation"]) == 24
    assert "text column 'sentence' (detected)" in loaded.summary


def test_tsv_keeps_quotes_and_parquet_keeps_declared_class_names(tmp_path: Path) -> None:
    import datasets

    tsv = tmp_path / "tsv"
    tsv.mkdir()
    (tsv / "train.tsv").write_text(
        'sentence\tlabel\nHe said "no" twice.\t1\nA "quoted text.\t0\n'
    )  # an unclosed quote too
    (tsv / "dev.tsv").write_text('sentence\tlabel\n"Hi" there\t0\n')
    loaded = load_data(tsv)
    assert loaded.splits["train"]["sentence"] == ['He said "no" twice.', 'A "quoted text.'] and loaded.splits[
        "validation"
    ]["sentence"] == ['"Hi" there']

    parquet = tmp_path / "parquet"
    parquet.mkdir()
    features = datasets.Features(
        text=datasets.Value("string"), label=datasets.ClassLabel(names=["neg", "pos", "mixed"])
    )
    for split, rows in (("train", 6), ("validation", 3)):
        datasets.Dataset.from_dict(
            {"text": [f"review {i}" for i in range(rows)], "label": [i % 3 for i in range(rows)]}, features=features
        ).to_parquet(str(parquet / f"{split}.parquet"))
    loaded = load_data(parquet)
    assert loaded.labels.names == ("neg", "pos", "mixed")  # the data's own id order, not sorted
    assert loaded.splits["validation"]["label"] == [0, 1, 2]


def test_explicit_columns_and_numeric_label_order(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(
        "id,body,category\n" + "".join(f"{i},text number {i},{c}\n" for i, c in enumerate([10, 2, 1, 2, 10]))
    )
    (tmp_path / "validation.csv").write_text("id,body,category\n7,another text,2\n")
    loaded = load_data(DataSpec(str(tmp_path), text_column="body", label_column="category"))
    assert loaded.labels.names == ("1", "2", "10")  # numbers sort as numbers
    assert loaded.splits["train"]["label"] == [2, 1, 0, 1, 2] and loaded.splits["validation"]["label"] == [1]
    assert "text column 'body', label column 'category';" in loaded.summary


def test_text_that_pandas_would_call_missing_is_text(tmp_path: Path) -> None:
    """ "NA", "null" and "None" are tickets too (pandas reads them as missing values by default)."""
    (tmp_path / "train.csv").write_text("text,label\nNA,a\nnull,b\nNone,a\n")
    (tmp_path / "validation.csv").write_text("text,label\nN/A,b\n")
    assert load_data(tmp_path).splits["train"]["sentence"] == ["NA", "null", "None"]


def test_rewritten_file_with_its_old_timestamp_is_read_again(tmp_path: Path) -> None:
    root = write_tickets_csv(tmp_path / "t")
    train = root / "train.csv"
    assert load_data(root).splits["train"]["sentence"][0] != "Second version"
    stat = train.stat()
    train.write_text("text,label\nSecond version,bug\nThird,billing\nFourth,feature\n")
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_data(root).splits["train"]["sentence"] == ["Second version", "Third", "Fourth"]


@pytest.mark.parametrize("name", ["data[1]", "data*", "data?"])
def test_folder_names_are_paths_not_patterns(tmp_path: Path, name: str) -> None:
    root = write_tickets_csv(tmp_path / name, train=9)
    write_tickets_csv(tmp_path / "data1", train=6, seed=1)  # matches all three as a glob pattern
    assert len(load_data(root).splits["train"]) == 9


def test_glue_layout_with_a_header_is_a_table_and_without_is_cola(tmp_path: Path, synthetic_cola: Path) -> None:
    """train.tsv + dev.tsv is GLUE's layout both for CoLA (no header, 4 columns) and for SST-2 (a sentence/label
    header)."""
    sst2 = tmp_path / "SST-2"
    sst2.mkdir()
    (sst2 / "train.tsv").write_text("sentence\tlabel\nit 's a charming journey . \t1\nunfunny and dull \t0\n")
    (sst2 / "dev.tsv").write_text("sentence\tlabel\na gorgeous film \t1\n")
    assert load_data(sst2).labels.names == ("0", "1")
    cola = tmp_path / "CoLA"
    cola.mkdir()
    raw = synthetic_cola / "raw"
    (cola / "train.tsv").write_text((raw / "in_domain_train.tsv").read_text())
    (cola / "dev.tsv").write_text((raw / "in_domain_dev.tsv").read_text())
    loaded = load_data(cola)
    assert loaded.labels == COLA and loaded.summary is None


def test_cola_loads_as_before_with_its_labels(synthetic_cola: Path) -> None:
    loaded = load_data(synthetic_cola, limit=5)
    assert loaded.labels.names == ("unacceptable", "acceptable") and loaded.labels.cola
    assert len(loaded.splits["train"]) == 5 and set(loaded.splits["validation"]["domain"]) == {"in", "out"}
    with pytest.raises(BertpackError, match="is CoLA, whose TSV files have fixed columns"):
        load_data(DataSpec(str(synthetic_cola), text_column="text"))


# ------------------------------------------------------------------------- bad data: one line naming file, row, problem
def _csv(root: Path, train: str, validation: str = "text,label\nfine,a\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.csv").write_text(train)
    (root / "validation.csv").write_text(validation)
    return root


@pytest.mark.parametrize(
    "train, validation, message",
    [
        (
            "body,label\nhello,a\nbye,b\n",
            None,
            r"train\.csv has no column 'text' or 'sentence' \(columns found: body, label\); pass --text-column",
        ),
        (
            "text,category\nhello,a\nbye,b\n",
            None,
            r"train\.csv has no column 'label' \(the default --label-column; columns found: text, category\)",
        ),
        (
            "text,label\nhello,a\nbye,b\n",
            "text,lbl\nok,a\n",
            r"validation\.csv has no column 'label' .*columns found: text, lbl",
        ),
        ("text,label\nhello,a\n,b\n", None, r"train\.csv row 2: the text column 'text' is empty"),
        ("text,label\nhello,a\n   ,b\n", None, r"train\.csv row 2: the text column 'text' is empty"),
        (
            "text,label\nhello,a\nbye,b\n",
            "text,label\nok,a\nfine,\n",
            r"validation\.csv row 2: the label column 'label' is empty",
        ),
        (
            "text,label\nhello,1.5\nbye,2\n",
            None,
            r"train\.csv row 1: the label column 'label' is 1\.5, not a class label",
        ),
        (
            "text,label\nhello,a\nbye,a\nagain,a\n",
            None,
            r"train\.csv: the label column 'label' holds one class \('a'\) in all its 3 rows",
        ),
        (
            "text,label\nhello,a\nbye,b\n",
            "text,label\nok,a\nnew,c\n",
            r"validation\.csv row 2: label 'c' never occurs in train\.csv \(its labels: a, b\)",
        ),
        (
            "text,label\n" + "".join(f"text {i},class{i}\n" for i in range(1001)),
            None,
            r"holds 1001 classes, over the 1000 bertpack takes",
        ),
        ("text,label\n1,a\n2,b\n", None, r"the text column 'text' holds int64 values, not text"),
    ],
)
def test_bad_rows_are_one_error_naming_file_and_row(
    tmp_path: Path, train: str, validation: str | None, message: str
) -> None:
    root = _csv(tmp_path / "d", train, *([validation] if validation else ["text,label\nfine,a\n"]))
    with pytest.raises(BertpackError, match=message):
        load_data(root)


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "train.parquet",
            b"text,label\nhello,a\n",
            r"train\.parquet: not a readable Parquet file \(ArrowInvalid: Parquet magic bytes",
        ),
        (
            "train.jsonl",
            b"text,label\nhello,a\n",
            r"train\.jsonl: not a readable JSON Lines file \(ArrowInvalid: JSON parse error",
        ),
        (
            "train.csv",
            b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00\xd0\x9f" * 20,
            r"train\.csv: not a readable CSV file \(not UTF-8 text",
        ),
        (
            "train.csv",
            b'text,label\n"an open quote,a\n',
            r"train\.csv: not a readable CSV file \(ParserError: .*check that it is CSV",
        ),
        ("train.csv", b"", r"train\.csv is empty; it needs a header row"),
    ],
)
def test_a_file_that_is_not_what_its_extension_says(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    (tmp_path / "validation.csv").write_text("text,label\nfine,a\n")
    with pytest.raises(BertpackError, match=message):
        load_data(tmp_path)


def test_layouts_that_are_refused(tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (one / "tickets.csv").write_text("text,label\na,x\nb,y\n")
    with pytest.raises(
        BertpackError,
        match=r"tickets\.csv is one file, and a run needs a validation split .* put the rows in "
        r"train\.csv and validation\.csv \(or dev\.csv\) in one folder",
    ):
        load_data(one / "tickets.csv")
    (one / "train.csv").write_text("text,label\na,x\nb,y\n")
    (one / "test.csv").write_text("text,label\na,x\n")
    with pytest.raises(
        BertpackError, match=r"no validation file beside train\.csv \(test\.csv is the held-out test split"
    ):
        load_data(one)
    (one / "train.jsonl").write_text('{"text": "a", "label": "x"}\n')
    with pytest.raises(BertpackError, match=r"holds 2 train files \(train\.csv, train\.jsonl\)"):
        load_data(one)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BertpackError, match=r"unknown file type '\.txt'"):
        load_data(tmp_path / "notes.txt")
    with pytest.raises(BertpackError, match=r"no CoLA files and no data set in .*empty"):
        (tmp_path / "empty").mkdir()
        load_data(tmp_path / "empty")
    with pytest.raises(BertpackError, match="does not exist"):
        load_data(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- GLUE SST-2 through the hub
def _sst2_hub(monkeypatch: pytest.MonkeyPatch) -> list:
    """Stand in for the hub in `datasets.load_dataset("nyu-mll/glue", "sst2")`: its schema (sentence, ClassLabel
    negative/positive, idx), a test split without labels (-1) as GLUE's."""
    import datasets

    features = datasets.Features(
        sentence=datasets.Value("string"),
        label=datasets.ClassLabel(names=["negative", "positive"]),
        idx=datasets.Value("int32"),
    )

    def split(n: int, labelled: bool = True) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "sentence": [f"a review {i}" for i in range(n)],
                "label": [i % 2 if labelled else -1 for i in range(n)],
                "idx": list(range(n)),
            },
            features=features,
        )

    real_load, asked = datasets.load_dataset, []

    def load_dataset(path, name=None, **kwargs):
        if (path, name) != ("nyu-mll/glue", "sst2"):
            return real_load(path, name, **kwargs)
        asked.append((path, name))
        return datasets.DatasetDict(train=split(10), validation=split(4), test=split(3, labelled=False))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return asked


def test_glue_sst2_from_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _sst2_hub(monkeypatch)
    loaded = load_data("glue/sst2", limit=6)
    assert asked == [("nyu-mll/glue", "sst2")]
    assert loaded.labels.names == ("negative", "positive") and set(loaded.splits) == {"train", "validation"}
    assert len(loaded.splits["train"]) == 6 and loaded.splits["validation"]["label"] == [0, 1, 0, 1]
    assert data_source("glue/sst2", "export", ["negative", "positive"]) == "glue/sst2"
    with pytest.raises(
        BertpackError, match=r"its labels \(negative, positive\) are not the model's \(unacceptable, acceptable\)"
    ):
        data_source("glue/sst2", "export")


def test_glue_tasks_that_are_not_one_sentence_or_not_reachable() -> None:
    with pytest.raises(BertpackError, match="GLUE's mnli classifies sentence pairs; .* pass glue/cola or glue/sst2"):
        load_data("glue/mnli")
    with pytest.raises(BertpackError, match="no GLUE task 'sst5'"):
        load_data("glue/sst5")
    with pytest.raises(BertpackError, match="could not load GLUE SST-2 from the hub"):  # offline here (HF_HUB_OFFLINE)
        load_data("glue/sst2")


# ----------------------------------------------------------------------------- the data export, verify and bench read
def test_data_source_reads_what_the_run_recorded_and_checks_the_model_labels(
    tmp_path: Path, synthetic_cola: Path
) -> None:
    root = write_tickets_csv(tmp_path / "tickets")
    names = ["billing", "bug", "feature"]
    recorded = DataSpec(str(root), "text", "label")
    assert data_source(None, "export", names, recorded) == DataSpec(str(root.resolve()), "text", "label")
    with pytest.raises(
        BertpackError, match=r"no data for export: the model's labels \(billing, bug, feature\) are not CoLA's"
    ):
        data_source(None, "export", names, None)
    with pytest.raises(BertpackError, match=r"--data .*: its labels \(unacceptable, acceptable\) are not the model's"):
        data_source(synthetic_cola, "export", names, recorded)
    with pytest.raises(BertpackError, match=r"'feature' is no label of the model"):
        data_source(root, "bench", ["billing", "bug"], None)
    # the model's own ids, matched by name: a model whose labels are in another order
    sentences, ids, _ = validation_sentences(root, ["feature", "bug", "billing"])
    assert ids[:3] == [2, 1, 0] and len(sentences) == 24


def test_label_helpers() -> None:
    assert sorted_labels(["b", "a", "b"]).names == ("a", "b")
    assert sorted_labels(["10", "9", "-1"]).names == ("-1", "9", "10")
    assert Labels(("x", "y", "z")).label2id() == {"x": 0, "y": 1, "z": 2} and Labels(("x", "y")).id2label() == {
        0: "x",
        1: "y",
    }


# ----------------------------------------------------------------------------- metrics and weights for N classes
def test_scores_of_more_than_two_classes() -> None:
    from sklearn.metrics import f1_score, matthews_corrcoef

    from bertpack.metrics import scores

    labels, preds = [0, 1, 2, 2, 1, 0, 2, 1], [0, 2, 2, 2, 1, 1, 0, 1]
    got = scores(labels, preds, num_labels=3)
    assert got["mcc"] == pytest.approx(matthews_corrcoef(labels, preds)) and 0 < got["mcc"] < 1
    assert got["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    assert got["accuracy"] == pytest.approx(5 / 8)
    assert "macro_f1" not in scores([0, 1], [0, 1]) and "mcc_in_domain" not in got


def test_balanced_class_weights_for_three_classes() -> None:
    from trainer.train import balanced_class_weights

    weights = balanced_class_weights([0, 0, 0, 0, 1, 1, 2, 2], 3, ("billing", "bug", "feature"))
    assert weights == pytest.approx([8 / (3 * 4), 8 / (3 * 2), 8 / (3 * 2)])
    with pytest.raises(BertpackError, match=r"label 'feature' \(id 2\) has none"):
        balanced_class_weights([0, 1, 1], 3, ("billing", "bug", "feature"))


def test_store_names() -> None:
    from export.store import check_name, default_name

    assert default_name(["unacceptable", "acceptable"], "/data/anything", Path("runs/x")) == "bertpack-cola"
    assert default_name(["a", "b"], "/data/Support Tickets", Path("runs/x")) == "bertpack-support-tickets"
    assert default_name(["negative", "positive"], "glue/sst2", Path("runs/x")) == "bertpack-sst2"
    assert default_name(["a", "b"], None, Path("runs/20250101-1200")) == "bertpack-20250101-1200"
    assert check_name("tickets-v2") == "tickets-v2"
    for bad in ("Tickets", "-x", "a b", "x" * 64):
        with pytest.raises(BertpackError, match="is not a BentoML model name"):
            check_name(bad)


def test_demo_dataset_script_is_seeded_and_loads(tmp_path: Path) -> None:
    """scripts/make_demo_dataset.py: the same seed writes the same files, another seed other ones; bertpack reads them
    as a 3-class data set with a test split."""
    import subprocess
    import sys

    from tests.conftest import REPO

    def make(folder: str, seed: int) -> Path:
        out = tmp_path / folder
        script = REPO / "scripts" / "make_demo_dataset.py"
        sizes = ["--train", "90", "--validation", "30", "--test", "30"]
        cmd = [sys.executable, str(script), str(out), "--seed", str(seed), *sizes]
        subprocess.run(cmd, check=True, capture_output=True)
        return out

    first, again, other = make("a", 0), make("b", 0), make("c", 1)
    for name in ("train.csv", "validation.csv", "test.csv"):
        assert (first / name).read_bytes() == (again / name).read_bytes() != (other / name).read_bytes()
    loaded = load_data(first)
    assert loaded.labels.names == ("billing", "bug", "feature") and len(loaded.splits["test"]) == 30
