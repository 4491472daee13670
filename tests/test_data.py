"""CoLA loading: both layouts, the real release's row counts, and every malformed-input error."""

from __future__ import annotations

from pathlib import Path

import pytest

from bertpack.data import OUT_OF_DOMAIN_SOURCES, check_tsv, load_cola, locate
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
    (tmp_path / "dev.tsv").write_text((raw / "in_domain_dev.tsv").read_text() + (raw / "out_of_domain_dev.tsv").read_text())
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
    records as the release folder: GLUE has no source column, so its first 527 validation rows are the in-domain ones."""
    release = load_cola(REAL_COLA)
    glue_hub(monkeypatch, REAL_COLA)
    glue = load_cola("glue")
    for split in ("train", "validation"):
        assert glue[split]["sentence"] == release[split]["sentence"] and glue[split]["label"] == release[split]["label"]
    assert glue["validation"]["domain"] == release["validation"]["domain"]
    assert glue["validation"]["domain"][526:528] == ["in", "out"]


@pytest.mark.parametrize("content, message", [
    ("gj04\t1\t\tGood.\ngj04\t1\tonly three\n", "expected 4 tab-separated columns"),
    ("gj04\t2\t\tA sentence.\n", "label must be 0 or 1"),
    ("gj04\tyes\t\tA sentence.\n", "label must be 0 or 1"),
    ("gj04\t1\t\t   \n", "sentence column is empty"),
    ("", "holds no rows"),
    ("\n\n", "holds no rows"),
])
def test_malformed_tsv_is_refused_with_line_number(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(BertpackError, match=message):
        check_tsv(path)


def test_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(BertpackError, match="not UTF-8"):
        check_tsv(path)


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


def test_cola_scores_split_by_domain() -> None:
    labels = [1, 0, 1, 0, 1, 0]
    preds = [1, 0, 1, 1, 0, 0]
    domains = ["in", "in", "in", "out", "out", "out"]
    scores = cola_scores(labels, preds, domains)
    assert scores["mcc_in_domain"] == pytest.approx(1.0)
    assert scores["mcc_out_domain"] == pytest.approx(-0.5)
    assert scores["accuracy"] == pytest.approx(4 / 6)


def test_unreadable_tsv_is_a_user_error(tmp_path: Path) -> None:
    """A path check_tsv cannot open (here a folder where a TSV belongs; a chmod 000 file is tested through the
    CLI in test_train_errors) is a BertpackError naming the file, not an OSError traceback."""
    (tmp_path / "in_domain_dev.tsv").mkdir()
    with pytest.raises(BertpackError, match="in_domain_dev.tsv: cannot read it"):
        check_tsv(tmp_path / "in_domain_dev.tsv")
