"""Model quality: the held-out selection split, the decision (temperature and threshold), weight averaging, and the
one decision rule shared by predict, the service and bench. Real training of the tiny BERT, real exports, a real
`bentoml serve`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertpack.errors import BertpackError
from tests.conftest import REPO, make_balanced_tiny_run, make_tiny_run, run_cli


# ----------------------------------------------------------------------------- the selection split
def _rows(labels: list[int]):
    import datasets

    return datasets.Dataset.from_dict(
        {"sentence": [f"s{i}" for i in range(len(labels))], "label": labels, "domain": ["in"] * len(labels)}
    )


def test_hold_out_is_seeded_stratified_and_disjoint():
    from bertpack.data import hold_out

    labels = [1] * 70 + [0] * 30
    train, selection, rows = hold_out(_rows(labels), 0.1, seed=0)
    assert len(selection) == 10 and len(train) == 90 and rows == sorted(rows)
    assert sorted(selection["label"]) == [0] * 3 + [1] * 7  # the label shares of the whole set
    assert set(selection["sentence"]) == {f"s{i}" for i in rows}
    assert not set(selection["sentence"]) & set(train["sentence"])
    assert train.features == _rows(labels).features  # the label column keeps its type
    assert hold_out(_rows(labels), 0.1, seed=0)[2] == rows
    assert hold_out(_rows(labels), 0.1, seed=1)[2] != rows


def test_hold_out_takes_a_class_label_column_and_more_labels():
    import datasets

    from bertpack.data import hold_out

    rows = _rows([0, 1, 2] * 20).cast_column("label", datasets.ClassLabel(names=["a", "b", "c"]))
    train, selection, _ = hold_out(rows, 0.2, seed=0)
    assert sorted(selection["label"]) == [0] * 4 + [1] * 4 + [2] * 4
    assert train.features["label"].names == ["a", "b", "c"]


def test_hold_out_of_too_few_rows_is_a_clear_error():
    from bertpack.data import hold_out

    with pytest.raises(BertpackError, match="raise --limit, or pass --select-on dev"):
        hold_out(_rows([1, 1, 1, 0]), 0.1, seed=0)  # one row of label 0: it cannot be in both parts


def _flip_dev(cola: Path, into: Path) -> Path:
    """A copy of `cola` whose validation files say the opposite label and hold other sentences."""
    shutil.copytree(cola, into)
    for name in ("in_domain_dev.tsv", "out_of_domain_dev.tsv"):
        path = into / "raw" / name
        rows = [line.split("\t") for line in path.read_text().splitlines()]
        path.write_text(
            "".join(
                f"{s}\t{1 - int(y)}\t{star}\tAnother sentence number {i}.\n" for i, (s, y, star, _) in enumerate(rows)
            )
        )
    return into


def test_validation_rows_never_reach_training_or_selection(tmp_path, synthetic_cola):
    """By default the checkpoint, its temperature and threshold come from rows held out of train: the same run with
    other validation files (other sentences, opposite labels) ends with the same weights and decision. Choosing on
    the validation split (--select-on dev, the old default), the opposite labels choose another checkpoint."""
    from safetensors.numpy import load_file

    from trainer.config import TrainConfig
    from trainer.train import train

    run = make_tiny_run(tmp_path / "tiny", distinct=True)
    flipped = _flip_dev(synthetic_cola, tmp_path / "flipped")
    recipe = dict(model=str(run / "model"), max_steps=8, batch_size=8, evals_per_epoch=8, learning_rate=1e-3, seed=0)
    a = train(TrainConfig(data=str(synthetic_cola), out=tmp_path / "a", **recipe))
    b = train(TrainConfig(data=str(flipped), out=tmp_path / "b", **recipe))
    wa, wb = (
        load_file(str(tmp_path / "a" / "model" / "model.safetensors")),
        load_file(str(tmp_path / "b" / "model" / "model.safetensors")),
    )
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert a["best"]["checkpoint"] == b["best"]["checkpoint"] and a["decision"] == b["decision"]
    assert a["epochs"] == b["epochs"]  # the validation points score the held-out training rows only
    assert a["best"]["mcc"] != pytest.approx(b["best"]["mcc"])  # each validation split was scored, once, at the end
    assert a["selection"]["on"] == "selection split" and a["selection"]["rows"] == len(a["selection"]["indices"]) == 6
    assert a["train_rows"] == 58 and a["decision"]["fitted_on"] == "selection split"
    marker = json.loads((tmp_path / "a" / "bertpack_run.json").read_text())
    assert marker["config"]["select_on"] == "split" and marker["config"]["selection_split"] == 0.1

    on_dev = dict(recipe, select_on="dev")
    c = train(TrainConfig(data=str(synthetic_cola), out=tmp_path / "c", **on_dev))
    d = train(TrainConfig(data=str(flipped), out=tmp_path / "d", **on_dev))
    assert c["best"]["checkpoint"] != d["best"]["checkpoint"]  # the validation labels chose
    assert c["selection"] == {"on": "validation split", "rows": 48} and c["train_rows"] == 64
    assert c["decision"]["threshold"] is None  # labels stay the argmax: no threshold fitted on the reported rows


def test_summary_names_the_selection_split_and_the_decision(tmp_path, synthetic_cola):
    out = tmp_path / "run"
    run = make_tiny_run(tmp_path / "tiny", distinct=True)
    proc = run_cli(
        "train",
        "--model",
        str(run / "model"),
        "--data",
        str(synthetic_cola),
        "--out",
        str(out),
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--selection-split",
        "0.25",
        "--selection-seed",
        "3",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "validation points on the selection split (16 training rows held out)" in proc.stdout
    assert "validation split (held out: scored once, after the choice): MCC" in proc.stdout
    assert "at p(acceptable) >= " in proc.stdout and "ECE on the validation split" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection"]["seed"] == 3 and metrics["selection"]["fraction"] == 0.25
    for bad, message in (
        (["--selection-split", "0.9"], "--selection-split 0.9 is out of range"),
        (["--select-on", "test"], "--select-on must be 'split' or 'dev'"),
        (["--reinit-top-layers", "-1"], "--reinit-top-layers -1 is out of range"),
    ):
        proc = run_cli(
            "train", "--model", str(run / "model"), "--data", str(synthetic_cola), "--out", str(tmp_path / "x"), *bad
        )
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_reinit_top_layers_draws_only_the_top_layers_afresh(tmp_path, synthetic_cola):
    from safetensors.numpy import load_file

    from trainer.config import TrainConfig
    from trainer.train import train

    run = make_tiny_run(tmp_path / "tiny")
    train(
        TrainConfig(
            model=str(run / "model"),
            data=str(synthetic_cola),
            out=tmp_path / "r",
            max_steps=1,
            batch_size=8,
            learning_rate=1e-12,
            reinit_top_layers=1,
        )
    )
    before, after = (
        load_file(str(run / "model" / "model.safetensors")),
        load_file(str(tmp_path / "r" / "model" / "model.safetensors")),
    )
    key = "bert.encoder.layer.{}.attention.self.query.weight"
    assert np.abs(before[key.format(0)] - after[key.format(0)]).max() < 1e-6
    assert np.abs(before[key.format(1)] - after[key.format(1)]).max() > 1e-3
    with pytest.raises(BertpackError, match="more than the model's 2 encoder layers"):
        train(
            TrainConfig(
                model=str(run / "model"), data=str(synthetic_cola), out=tmp_path / "s", max_steps=1, reinit_top_layers=3
            )
        )


# ----------------------------------------------------------------------------- the decision
def test_temperature_minimises_nll_and_threshold_maximises_mcc():
    from bertpack.metrics import mcc
    from trainer.decision import best_threshold, fit_decision, nll

    rng = np.random.default_rng(0)
    labels = (rng.random(600) < 0.7).astype(int)
    logits = np.stack([np.zeros(600), 4.0 * (2 * labels - 1) + rng.normal(0, 4, 600) + 2.0], axis=1)  # over-confident
    decision, cut = fit_decision(logits, labels)
    grid = np.exp(np.linspace(np.log(0.2), np.log(5), 400))
    assert nll(logits, labels, decision.temperature) <= min(nll(logits, labels, t) for t in grid) + 1e-6
    assert decision.temperature > 1  # over-confident logits are softened
    p = 1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0]) / decision.temperature))
    every_cut = max(mcc(labels, p >= c) for c in np.unique(p))
    assert mcc(labels, p >= decision.threshold) == pytest.approx(every_cut)
    assert decision.threshold != pytest.approx(0.5, abs=0.02) and mcc(labels, p >= decision.threshold) > mcc(
        labels, p >= 0.5
    )
    assert best_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx(0.5)
    assert cut.used and cut.out_of_bag_gain > 0.02 and cut.threshold == decision.threshold  # the shift is real


def test_a_fitted_cut_that_does_not_hold_up_out_of_bag_is_not_used():
    """Calibrated, symmetric probabilities: 0.5 is the best cut in expectation, so the best cut of one sample sits on
    its noise. Fitted on bootstrap resamples it loses MCC on the rows each left out, and the decision keeps 0.5."""
    from bertpack.metrics import mcc
    from trainer.decision import ThresholdFit, describe_cut, fit_decision

    rng = np.random.default_rng(0)
    p = rng.beta(2, 2, 300)
    labels = (rng.random(300) < p).astype(int)
    logits = np.stack([np.zeros(300), np.log(p / (1 - p))], axis=1)
    decision, cut = fit_decision(logits, labels)
    assert cut.best_cut != pytest.approx(0.5, abs=0.01) and cut.out_of_bag_gain < -0.01 and not cut.used
    assert decision.threshold == 0.5 and cut.record()["used"] is False
    q = 1 / (1 + np.exp(-logits[:, 1] / decision.temperature))
    assert mcc(labels, q >= cut.best_cut) > mcc(labels, q >= 0.5)  # it did win on the rows it was fitted on
    record = {**decision.record(), "positive_label": "acceptable", "threshold_fit": cut.record()}
    assert describe_cut(record).startswith("p(acceptable) >= 0.500 (its best cut there, ")
    from export.parity import decision_lines

    assert decision_lines({"decision": {**record, "fitted_on": "selection split"}})[0].endswith(
        f"gained {cut.out_of_bag_gain:+.3f} MCC out of bag, so 0.5 is kept)"
    )
    assert ThresholdFit(0.3, 0.01).threshold == 0.3 and ThresholdFit(0.3, -0.01).threshold == 0.5


def test_decision_rule_and_its_fallbacks():
    from bertpack.metrics import expected_calibration_error
    from bertpack.postprocess import Decision, decide

    logits = np.array([[0.0, 1.0], [0.0, 0.2], [0.0, -1.0]])
    labels, probs = decide(logits, Decision(temperature=2.0, threshold=0.6))
    assert labels.tolist() == [1, 0, 0]  # p = 0.62, 0.52, 0.38: the second is above 0.5 but under the threshold
    assert probs[0, 1] == pytest.approx(1 / (1 + np.exp(-0.5)))
    assert decide(logits, Decision())[0].tolist() == [1, 1, 0]
    assert Decision.from_record({"temperature": 2.0, "threshold": 0.6}, 2) == Decision(2.0, 0.6, 1)
    assert Decision.from_record({"temperature": 2.0, "threshold": 0.6}, 3) == Decision(
        2.0, None, 1
    )  # argmax for 3 labels
    for broken in (None, [], {"temperature": -1, "threshold": 7}, {"temperature": "hot", "threshold": True}):
        assert Decision.from_record(broken, 2) == Decision()
    assert expected_calibration_error([1, 0], np.array([[0.2, 0.8], [0.6, 0.4]])) == pytest.approx(
        0.5 * 0.2 + 0.5 * 0.4
    )


# ----------------------------------------------------------------------------- weight averaging
def test_soup_averages_members_chosen_on_their_shared_selection_rows(tmp_path, synthetic_cola):
    from safetensors.numpy import load_file

    from export.checkpoint import locate_checkpoint
    from trainer.config import TrainConfig
    from trainer.soup import SoupConfig, soup
    from trainer.train import train

    run = make_tiny_run(tmp_path / "tiny", distinct=True)
    recipe = dict(model=str(run / "model"), data=str(synthetic_cola), max_steps=4, batch_size=8, learning_rate=1e-3)
    for seed in (1, 2):
        train(TrainConfig(out=tmp_path / f"seed{seed}", seed=seed, keep_checkpoints=True, **recipe))
    metrics = soup(
        SoupConfig(members=[tmp_path / "seed1", tmp_path / "seed2"], out=tmp_path / "soup", method="uniform")
    )
    w = [load_file(str(tmp_path / name / "model" / "model.safetensors")) for name in ("seed1", "seed2", "soup")]
    assert all(np.allclose(w[2][k], (w[0][k] + w[1][k]) / 2, atol=1e-7) for k in w[2])
    assert [m["seed"] for m in metrics["members"]] == [1, 2] and all(
        m["best"]["mcc"] is not None for m in metrics["members"]
    )
    assert set(metrics["candidates"]) == {"uniform", "greedy"} and metrics["method"] == "uniform"
    assert metrics["best"]["selected_on"] == "selection split" and metrics["decision"]["rows"] == 6
    ckpt = locate_checkpoint(tmp_path / "soup")  # the export takes it as any run
    assert ckpt.decision["threshold"] == metrics["decision"]["threshold"] and ckpt.max_length == 64

    # the last checkpoints of one run
    last = sorted((tmp_path / "seed1" / "checkpoints").glob("checkpoint-*"))
    assert len(last) == 2  # --keep-checkpoints keeps every validation point's
    averaged = soup(SoupConfig(members=last, out=tmp_path / "last"))
    assert [m["name"] for m in averaged["members"]] == ["seed1/checkpoint-2", "seed1/checkpoint-4"]

    train(TrainConfig(out=tmp_path / "other", seed=3, selection_seed=9, **recipe))
    with pytest.raises(BertpackError, match="held out different selection rows"):
        soup(SoupConfig(members=[tmp_path / "seed1", tmp_path / "other"], out=tmp_path / "bad"))
    with pytest.raises(BertpackError, match="holds the soup member"):
        soup(SoupConfig(members=[tmp_path / "seed1", tmp_path / "seed2"], out=tmp_path / "seed1"))
    with pytest.raises(BertpackError, match="at least two members"):
        soup(SoupConfig(members=[tmp_path / "seed1"], out=tmp_path / "one"))
    proc = run_cli("soup", str(tmp_path / "seed1"), str(tmp_path / "seed2"), "--out", str(tmp_path / "soup"))
    assert proc.returncode != 0 and "pass --overwrite" in proc.stderr and "Traceback" not in proc.stderr


def test_train_seeds_writes_its_members_and_their_soup(tmp_path, synthetic_cola):
    """`bertpack train --seeds 2`: two runs (seeds S and S+1) under OUT/members/, their average as OUT's model; run
    again, the complete members are kept and only the soup is made anew."""
    from export.checkpoint import locate_checkpoint

    run = make_tiny_run(tmp_path / "tiny", distinct=True)
    out = tmp_path / "soup"
    args = [
        "train",
        "--model",
        str(run / "model"),
        "--data",
        str(synthetic_cola),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--seed",
        "5",
        "--seeds",
        "2",
    ]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "soup" and [m["seed"] for m in metrics["members"]] == [5, 6]
    assert sorted(p.name for p in (out / "members").iterdir()) == ["seed5", "seed6"]
    assert json.loads((out / "bertpack_run.json").read_text())["status"] == "complete"
    assert locate_checkpoint(out).decision == metrics["decision"]
    again = run_cli(*args)
    assert again.returncode == 0 and again.stdout.count(", kept") == 2, again.stdout[-2000:]
    proc = run_cli(*args[:-1], "1")
    assert proc.returncode != 0 and "--seeds 1: a weight average needs at least 2 runs" in proc.stderr


# ----------------------------------------------------------------------------- one decision everywhere
def _thresholded_run(root: Path, cola: Path) -> tuple[Path, list[str], list[str]]:
    """A tiny run predicting both labels whose metrics.json records a temperature and a threshold that moves some
    sentences off their argmax label; returns (run, validation sentences, the labels PyTorch gives them there)."""
    import torch

    from bertpack.data import validation_sentences
    from bertpack.models import load_classifier, load_tokenizer

    sentences = validation_sentences(cola)[0]
    run = make_balanced_tiny_run(root, sentences)
    model, tok = load_classifier(run / "model").eval(), load_tokenizer(run / "model")
    with torch.no_grad():
        logits = np.stack([model(**tok(s, return_tensors="pt")).logits[0].numpy() for s in sentences])
    temperature = 1.7
    p = 1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0]) / temperature))
    above = np.unique(p[p > 0.5])
    k = int(np.argmax(np.diff(above)))  # the middle of the widest gap among the acceptable ones
    threshold = float((above[k] + above[k + 1]) / 2)
    assert 0 < np.sum((p > 0.5) & (p < threshold)) < np.sum(p > 0.5)  # some argmax-acceptable sentences change label
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["decision"] = {
        "temperature": temperature,
        "threshold": threshold,
        "positive": 1,
        "fitted_on": "selection split",
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run, sentences, ["acceptable" if x >= threshold else "unacceptable" for x in p]


@pytest.mark.slow
def test_predict_service_and_bench_label_alike_at_the_threshold(tmp_path, synthetic_cola):
    """The manifest's threshold (not 0.5) decides the label in `bertpack predict`, a real `bentoml serve` and
    `bertpack bench`, identically, sentence by sentence; the export prints ECE before and after the temperature."""
    import httpx

    from bertpack.metrics import mcc
    from serving import local_server

    run, sentences, expected = _thresholded_run(tmp_path / "run", synthetic_cola)
    art, home = tmp_path / "artifact", tmp_path / "bentoml"
    proc = run_cli(
        "export",
        str(run),
        "--out",
        str(art),
        "--data",
        str(synthetic_cola),
        "--int8",
        "none",
        "--no-flip-check",
        env={"BENTOML_HOME": str(home)},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (
        "calibration on CoLA validation (PyTorch fp32): ECE " in proc.stdout
        and "labels at p(acceptable) >= " in proc.stdout
    )
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["decision"]["threshold"] == pytest.approx(
        json.loads((run / "metrics.json").read_text())["decision"]["threshold"]
    )

    predicted = subprocess.run(
        [sys.executable, "-m", "bertpack.cli", "predict", str(art), "-", "--json"],
        cwd=REPO,
        input="\n".join(sentences) + "\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    by_predict = [json.loads(line)["label"] for line in predicted.stdout.splitlines()]
    assert by_predict == expected

    server, url = local_server.start_server({**os.environ, "BENTOML_HOME": str(home)}, tmp_path / "serve.log")
    try:
        answer = httpx.post(f"{url}/classify", json={"sentences": sentences}, timeout=120).json()
        info = httpx.get(f"{url}/info", timeout=30).json()
    finally:
        local_server.stop_server(server)
    by_service = [p["label"] for p in answer["predictions"]]
    assert by_service == expected
    assert info["decision"]["threshold"] == pytest.approx(manifest["decision"]["threshold"])
    assert all(set(p["probabilities"]) == {"acceptable", "unacceptable"} for p in answer["predictions"])

    out = tmp_path / "bench"
    proc = run_cli(
        "bench",
        str(art),
        "--out",
        str(out),
        "--data",
        str(synthetic_cola),
        "--batch-sizes",
        "8",
        "--engines",
        "pytorch_fp32,onnx_optimized",
        "--e2e-sentences",
        str(len(sentences)),
        "--no-profile",
        "--min-time",
        "0",
        "--min-samples",
        "1",
        "--max-passes",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads((out / "bench.json").read_text())
    by_bench = [payload["labels"][i] for i in payload["end_to_end"]["serving"]["predictions"]]
    assert by_bench == expected
    labels = [1 if x == "acceptable" else 0 for x in expected]
    truth = [
        int(line.split("\t")[1])
        for name in ("in_domain_dev.tsv", "out_of_domain_dev.tsv")
        for line in (synthetic_cola / "raw" / name).read_text().splitlines()
    ]
    for row in payload["rows"]:  # every engine's MCC is of its labels at the threshold
        assert row["mcc"] == pytest.approx(mcc(truth, labels)), row["engine"]
