"""CoLA loading: both layouts, the real release's row counts, and every malformed-input error."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertpack.data import OUT_OF_DOMAIN_SOURCES, load_cola, locate, read_tsv
from bertpack.errors import BertpackError
from bertpack.metrics import cola_scores
from tests.conftest import REAL_COLA, glue_hub, write_synthetic_cola


def test_release_layout_loads_with_domains(synthetic_cola: Path) -> None:
    ds = load_cola(synthetic_cola)
    assert set(ds) == {"train", "validation"}
    assert ds["train"].column_names == ["sentence", "label", "domain"]
    assert len(ds["validation"]) == 48
    assert set(ds["validation"]["domain"]) == {"in", "out"}
    assert set(ds["train"]["label"]) == {0, 1}


def test_limit_keeps_first_training_rows_only(synthetic_cola: Path) -> None:
    ds = load_cola(synthetic_cola, limit=5)
    assert len(ds["train"]) == 5
    assert len(ds["validation"]) == 48


def test_glue_layout(tmp_path: Path, synthetic_cola: Path) -> None:
    raw = synthetic_cola / "raw"
    (tmp_path / "train.tsv").write_text((raw / "in_domain_train.tsv").read_text())
    (tmp_path / "dev.tsv").write_text(
        (raw / "in_domain_dev.tsv").read_text() + (raw / "out_of_domain_dev.tsv").read_text()
    )
    assert locate(tmp_path).layout == "glue"
    ds = load_cola(tmp_path)
    assert ds["validation"]["domain"].count("out") == 24


@pytest.mark.skipif(not (REAL_COLA / "raw").is_dir(), reason="the CoLA 1.1 copy is not beside the project")
def test_real_cola_counts_match_glue() -> None:
    ds = load_cola(REAL_COLA)
    assert len(ds["train"]) == 8551
    val = ds["validation"]
    assert len(val) == 1043  # GLUE validation = in_domain_dev + out_of_domain_dev
    assert val["domain"].count("in") == 527 and val["domain"].count("out") == 516
    assert sum(val["label"]) == 365 + 354
    # a sentence with quotes survives (QUOTE_NONE), and out-of-domain sources are exactly the 6 held-out ones
    assert any('"' in s for s in ds["train"]["sentence"])
    sources = {line.split("\t")[0] for line in (REAL_COLA / "raw" / "out_of_domain_dev.tsv").read_text().splitlines()}
    assert sources == OUT_OF_DOMAIN_SOURCES


@pytest.mark.skipif(not (REAL_COLA / "raw").is_dir(), reason="the CoLA 1.1 copy is not beside the project")
def test_glue_from_the_hub_gives_the_release_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """--data glue (the hub's GLUE CoLA, stood in for by the release files in its schema and order) gives the same
    records as the release folder: GLUE has no source column, so its first 527 validation rows are the in-domain
    ones."""
    release = load_cola(REAL_COLA)
    glue_hub(monkeypatch, REAL_COLA)
    glue = load_cola("glue")
    for split in ("train", "validation"):
        assert glue[split]["sentence"] == release[split]["sentence"] and glue[split]["label"] == release[split]["label"]
    assert glue["validation"]["domain"] == release["validation"]["domain"]
    assert glue["validation"]["domain"][526:528] == ["in", "out"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("gj04\t1\t\tGood.\ngj04\t1\tonly three\n", "expected 4 tab-separated columns"),
        ("gj04\t2\t\tA sentence.\n", "label must be 0 or 1"),
        ("gj04\tyes\t\tA sentence.\n", "label must be 0 or 1"),
        ("gj04\t1\t\t   \n", "sentence column is empty"),
        ("", "holds no rows"),
        ("\n\n", "holds no rows"),
        (
            "source\tlabel\tstar\tsentence\ngj04\t1\t\tA sentence.\n",
            r"found 'label' \(a header row\? CoLA TSV files have none\)",
        ),
        (
            "gj04\t1\t\t" + "word " * 30000 + "\n",
            r"bad\.tsv:1: field larger than field limit .*; is this a CoLA TSV file\?",
        ),
    ],
)
def test_malformed_tsv_is_refused_with_line_number(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(BertpackError, match=message):
        read_tsv(path)


def test_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(BertpackError, match="not UTF-8"):
        read_tsv(path)


def test_malformed_file_in_folder_names_file_and_line(tmp_path: Path) -> None:
    root = write_synthetic_cola(tmp_path / "cola")
    dev = root / "raw" / "in_domain_dev.tsv"
    dev.write_text(dev.read_text() + "gj04\t1\n")
    with pytest.raises(BertpackError, match=r"in_domain_dev\.tsv:25: expected 4"):
        load_cola(root)


def test_missing_folder_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(BertpackError, match="does not exist"):
        locate(tmp_path / "nope")
    with pytest.raises(BertpackError, match="no CoLA files"):
        locate(tmp_path)
    root = write_synthetic_cola(tmp_path / "cola")  # part of a release: the missing file (or dead link) is named
    (root / "raw" / "out_of_domain_dev.tsv").unlink()
    (root / "raw" / "in_domain_dev.tsv").unlink()
    (root / "raw" / "in_domain_dev.tsv").symlink_to(tmp_path / "gone.tsv")
    with pytest.raises(
        BertpackError,
        match=r"release is incomplete: .*in_domain_dev\.tsv \(a broken link\), .*out_of_domain_dev\.tsv \(missing\)",
    ):
        locate(root)


@pytest.mark.parametrize("name", ["cola[1]", "cola*", "cola?"])
def test_folder_names_are_paths_not_patterns(tmp_path: Path, name: str) -> None:
    """The data is read from the folder given, whatever characters its name holds ([ ] * ? are glob patterns to
    `datasets`: `cola[1]` loaded a sibling `cola1`, `cola*` every matching folder)."""
    root = write_synthetic_cola(tmp_path / name)
    sibling = write_synthetic_cola(tmp_path / "cola1", train_rows=8, seed=1)  # matches all three patterns
    (tmp_path / "colax").mkdir()
    expected = [line.split("\t")[3] for line in (root / "raw" / "in_domain_train.tsv").read_text().splitlines()]
    assert load_cola(root)["train"]["sentence"] == expected
    assert len(load_cola(sibling)["train"]) == 8


def test_rewritten_data_with_its_old_timestamp_is_read_again(tmp_path: Path) -> None:
    """tar, cp -p and rsync -t keep a file's modification time: new content must still be what is read."""
    import os

    root = write_synthetic_cola(tmp_path / "cola")
    train = root / "raw" / "in_domain_train.tsv"
    assert load_cola(root)["train"]["sentence"][0] != "Second version!"
    stat = train.stat()
    train.write_text("gj04\t0\t*\tSecond version!\n")
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = load_cola(root)["train"]
    assert again["sentence"] == ["Second version!"] and again["label"] == [0]


def test_a_local_folder_named_glue_is_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the word `glue` means the hub; ./glue is the folder of that name."""
    from bertpack.data import data_source

    write_synthetic_cola(tmp_path / "glue")
    monkeypatch.chdir(tmp_path)
    assert data_source("./glue", "export") == (tmp_path / "glue").resolve()


def test_cola_scores_split_by_domain() -> None:
    labels = [1, 0, 1, 0, 1, 0]
    preds = [1, 0, 1, 1, 0, 0]
    domains = ["in", "in", "in", "out", "out", "out"]
    scores = cola_scores(labels, preds, domains)
    assert scores["mcc_in_domain"] == pytest.approx(1.0)
    assert scores["mcc_out_domain"] == pytest.approx(-0.5)
    assert scores["accuracy"] == pytest.approx(4 / 6)


def test_unreadable_tsv_is_a_user_error(tmp_path: Path) -> None:
    """A path read_tsv cannot open (here a folder where a TSV belongs; a chmod 000 file is tested through the
    CLI in test_train_errors) is a BertpackError naming the file, not an OSError traceback."""
    (tmp_path / "in_domain_dev.tsv").mkdir()
    with pytest.raises(BertpackError, match="in_domain_dev.tsv: cannot read it"):
        read_tsv(tmp_path / "in_domain_dev.tsv")
