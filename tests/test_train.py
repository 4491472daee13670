"""`bertpack train`: the optimizer recipe, every CLI error path, resume, DDP under torchrun, and one
real fine-tuning run of the embedded model that checks the run-folder contract."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bertpack.errors import BertpackError
from tests.conftest import run_cli, run_process_group


def _one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


# ----------------------------------------------------------------------------- unit
def test_layer_decay_and_head_multiplier_set_group_learning_rates(tiny_run: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from trainer.config import TrainConfig
    from trainer.train import build_optimizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_run / "model")
    cfg = TrainConfig(learning_rate=1e-3, layer_decay=0.5, head_lr_multiplier=4.0, weight_decay=0.1)
    opt = build_optimizer(model, cfg)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert lr_of[id(params["classifier.weight"])] == pytest.approx(4e-3)
    assert lr_of[id(params["bert.pooler.dense.weight"])] == pytest.approx(4e-3)  # the pooler feeds only the head
    assert lr_of[id(params["bert.encoder.layer.1.attention.self.query.weight"])] == pytest.approx(
        1e-3 * 0.5
    )  # top layer (L=2)
    assert lr_of[id(params["bert.encoder.layer.0.attention.self.query.weight"])] == pytest.approx(1e-3 * 0.25)
    assert lr_of[id(params["bert.embeddings.word_embeddings.weight"])] == pytest.approx(1e-3 * 0.125)
    assert wd_of[id(params["bert.encoder.layer.0.attention.self.query.bias"])] == 0.0
    assert wd_of[id(params["bert.encoder.layer.0.output.LayerNorm.weight"])] == 0.0
    assert wd_of[id(params["classifier.weight"])] == 0.1
    assert sum(len(g["params"]) for g in opt.param_groups) == len(params)


def test_balanced_class_weights_and_weighted_loss() -> None:
    import torch

    from trainer.train import balanced_class_weights, weighted_loss

    weights = balanced_class_weights([1, 1, 1, 0])
    assert weights == pytest.approx([2.0, 2 / 3])  # n / (classes * count): the minority class counts more
    with pytest.raises(BertpackError, match="label 0 has none; raise --limit or pass --class-weights none"):
        balanced_class_weights([1, 1, 1])  # a class absent from the training rows has no weight
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([1, 1])
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert weighted_loss([1.0, 1.0])({"logits": logits}, labels) == pytest.approx(plain.item())
    # one miss on the minority class beside one right answer on the majority class: weighted, the miss dominates
    logits, labels = torch.tensor([[0.0, 2.0], [0.0, 2.0]]), torch.tensor([0, 1])
    miss, right = (torch.nn.functional.cross_entropy(logits[i : i + 1], labels[i : i + 1]).item() for i in (0, 1))
    expected = (weights[0] * miss + weights[1] * right) / (weights[0] + weights[1])
    assert weighted_loss(weights)({"logits": logits}, labels).item() == pytest.approx(expected)
    with torch.no_grad():  # validation: the plain cross-entropy, comparable with runs without class weights
        plain = torch.nn.functional.cross_entropy(logits, labels).item()
        assert (
            weighted_loss(weights)({"logits": logits}, labels).item() == pytest.approx(plain) != pytest.approx(expected)
        )
    assert expected > torch.nn.functional.cross_entropy(logits, labels).item()


def test_evals_per_epoch_holds_in_a_max_steps_run(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    """--evals-per-epoch is honoured with --max-steps too (it was silently replaced by "twice in the run"),
    and a --max-steps run shorter than that schedule still validates twice."""
    from trainer.config import TrainConfig
    from trainer.train import train

    common = dict(
        model=str(tiny_run / "model"), data=str(synthetic_cola), batch_size=8, max_steps=4, learning_rate=1e-12
    )
    many = train(TrainConfig(out=tmp_path / "many", evals_per_epoch=100, **common))  # every step
    assert len(many["epochs"]) == 4, many["epochs"]
    few = train(TrainConfig(out=tmp_path / "few", evals_per_epoch=1, **common))  # once per epoch: after the 4 steps
    assert len(few["epochs"]) == 2, few["epochs"]


def test_reinit_pooler_and_evals_per_epoch(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    """--reinit-pooler changes only the pooler before training; --evals-per-epoch 2 gives two validation rows per epoch;
    --class-weights balanced records its weights."""
    from trainer.config import TrainConfig
    from trainer.train import train

    out = tmp_path / "run"
    cfg = TrainConfig(
        model=str(tiny_run / "model"),
        data=str(synthetic_cola),
        out=out,
        epochs=1,
        batch_size=8,
        evals_per_epoch=2,
        reinit_pooler=True,
        class_weights="balanced",
        learning_rate=1e-12,
    )
    metrics = train(cfg)
    assert [r["epoch"] for r in metrics["epochs"]] == pytest.approx([0.5, 1.0], abs=0.1)
    assert metrics["class_weights"] and metrics["class_weights"][0] != metrics["class_weights"][1]
    from safetensors.torch import load_file

    before, after = load_file(tiny_run / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert not before["bert.pooler.dense.weight"].equal(after["bert.pooler.dense.weight"])
    # lr 1e-12: the encoder is (numerically) untouched, so only the re-initialised pooler differs
    assert (
        before["bert.encoder.layer.0.attention.self.query.weight"]
        - after["bert.encoder.layer.0.attention.self.query.weight"]
    ).abs().max() < 1e-6


# ----------------------------------------------------------------------------- CLI errors
def test_same_seed_same_weights(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    """A checkpoint without a classifier (like the embedded model) gets a new head at load time: --seed must
    decide it, so two runs with one seed end with identical weights and another seed does not."""
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer, BertModel

    encoder = tmp_path / "encoder"
    BertModel.from_pretrained(tiny_run / "model").save_pretrained(encoder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_run / "model").save_pretrained(encoder)
    weights = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        proc = run_cli(
            "train",
            "--model",
            str(encoder),
            "--data",
            str(synthetic_cola),
            "--out",
            str(tmp_path / name),
            "--limit",
            "32",
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--seed",
            seed,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        weights[name] = load_file(str(tmp_path / name / "model" / "model.safetensors"))
    assert weights["a"].keys() == weights["b"].keys() and "classifier.weight" in weights["a"]
    assert all((weights["a"][k] == weights["b"][k]).all() for k in weights["a"])
    assert not (weights["a"]["classifier.weight"] == weights["c"]["classifier.weight"]).all()


def test_unknown_model_and_offline_hub(tmp_path: Path, synthetic_cola: Path) -> None:
    empty_cache = str(tmp_path / "hf")  # bert-base-uncased in a developer's own cache would load from there
    proc = run_cli(
        "train",
        "--model",
        "bert-base-uncased",
        "--data",
        str(synthetic_cola),
        "--out",
        str(tmp_path / "r"),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": empty_cache},
    )
    _one_line_error(proc, "pass a local checkpoint folder")
    assert "HF_HUB_OFFLINE" not in proc.stderr  # it is set: no hint to set it
    # Offline without HF_HUB_OFFLINE (a hub that refuses connections): after the hub's own retries (~25 s),
    # stderr holds our one line only, not also the hub's logged exception.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    proc = run_cli(
        "train",
        "--model",
        "bert-base-uncased",
        "--data",
        str(synthetic_cola),
        "--out",
        str(tmp_path / "r"),
        env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{closed_port}", "HF_HOME": empty_cache},
    )
    _one_line_error(proc, "could not reach the Hugging Face hub")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "set HF_HUB_OFFLINE=1 to skip the hub's retries" in proc.stderr
    proc = run_cli("train", "--model", "./no/such/dir", "--data", str(synthetic_cola), "--out", str(tmp_path / "r"))
    _one_line_error(proc, "no such folder")
    assert not (tmp_path / "r").exists()


def test_model_that_is_not_bert_or_not_safetensors(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (gpt / "model.safetensors").write_bytes(b"")
    _one_line_error(
        run_cli("train", "--model", str(gpt), "--data", str(synthetic_cola), "--out", str(tmp_path / "r")),
        "'gpt2' checkpoint",
    )
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_run / "model", pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    _one_line_error(
        run_cli("train", "--model", str(pickled), "--data", str(synthetic_cola), "--out", str(tmp_path / "r")),
        "only safetensors",
    )


def test_classifier_with_another_label_count_gets_a_new_head(
    tmp_path: Path, synthetic_cola: Path, tiny_run: Path
) -> None:
    """A BERT classifier with 3 labels (an MNLI model) trains with a new 2-label head and a note saying so; it was
    refused as 'damaged' (the 3x32 head does not fit 2 labels). The encoder's weights are the checkpoint's."""
    from safetensors.torch import load_file
    from transformers import BertForSequenceClassification

    mnli = tmp_path / "mnli"
    model = BertForSequenceClassification.from_pretrained(
        tiny_run / "model",
        num_labels=3,
        ignore_mismatched_sizes=True,
        id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
        label2id={"entailment": 0, "neutral": 1, "contradiction": 2},
    )
    model.save_pretrained(mnli, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_run / "model" / name).is_file():
            shutil.copy(tiny_run / "model" / name, mnli / name)
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        "--model",
        str(mnli),
        "--data",
        str(synthetic_cola),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "1e-12",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "is a sequence classifier with 3 labels; its head is replaced by a new 2-label head" in proc.stderr
    trained = load_file(out / "model" / "model.safetensors")
    assert trained["classifier.weight"].shape == (2, 32)
    before = load_file(mnli / "model.safetensors")
    key = "bert.embeddings.word_embeddings.weight"
    assert (trained[key] - before[key]).abs().max().item() < 1e-6  # lr 1e-12: the encoder is the checkpoint's


def test_bad_data_and_bad_options(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    model = str(tiny_run / "model")
    _one_line_error(
        run_cli("train", "--model", model, "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")),
        "does not exist",
    )
    bad = tmp_path / "bad"
    shutil.copytree(synthetic_cola, bad)
    (bad / "raw" / "in_domain_train.tsv").write_text("gj04\t7\t\tA sentence.\n")
    _one_line_error(
        run_cli("train", "--model", model, "--data", str(bad), "--out", str(tmp_path / "r")), "label must be 0 or 1"
    )
    _one_line_error(run_cli("train", "--model", model, "--data", str(synthetic_cola), "--lr", "-1"), "--lr")
    _one_line_error(run_cli("train", "--model", model, "--data", str(synthetic_cola), "--padding", "nope"), "--padding")
    _one_line_error(
        run_cli("train", "--model", model, "--data", str(synthetic_cola), "--class-weights", "x"), "--class-weights"
    )
    _one_line_error(
        run_cli("train", "--model", model, "--data", str(synthetic_cola), "--evals-per-epoch", "0"), "--evals-per-epoch"
    )
    assert not (tmp_path / "r").exists()


def test_refuses_foreign_output_folder(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    proc = run_cli("train", "--model", str(tiny_run / "model"), "--data", str(synthetic_cola), "--out", str(out))
    _one_line_error(proc, "is not a bertpack run")
    assert (out / "thesis.tex").read_text() == "precious"
    _one_line_error(
        run_cli(
            "train", "--model", str(tiny_run / "model"), "--data", str(synthetic_cola), "--out", str(out), "--resume"
        ),
        "no bertpack run to resume",
    )


# ----------------------------------------------------------------------------- resume
def test_resume_continues_an_interrupted_run(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    out = tmp_path / "run"
    common = [
        "train",
        "--model",
        str(tiny_run / "model"),
        "--data",
        str(synthetic_cola),
        "--out",
        str(out),
        "--batch-size",
        "8",
    ]
    first = run_cli(*common, "--max-steps", "4", "--keep-checkpoints")
    assert first.returncode == 0, first.stderr[-2000:]
    assert (
        json.loads((out / "metrics.json").read_text())["resumed_from"] is None and "since --resume" not in first.stdout
    )
    # simulate a crash after the last checkpoint: the run is not marked complete
    marker = json.loads((out / "bertpack_run.json").read_text())
    (out / "bertpack_run.json").write_text(json.dumps({**marker, "status": "training"}))
    _one_line_error(run_cli(*common, "--max-steps", "8"), "--resume")
    # --resume takes the data, model and recipe from the run's bertpack_run.json; --max-steps may lengthen it,
    # and --no-keep-checkpoints overrides the recorded --keep-checkpoints
    second = run_cli("train", "--out", str(out), "--max-steps", "8", "--no-keep-checkpoints", "--resume")
    assert second.returncode == 0, second.stderr[-2000:]
    recorded = json.loads((out / "bertpack_run.json").read_text())["config"]
    assert (recorded["data"], recorded["model"], recorded["batch_size"], recorded["max_steps"]) == (
        str(synthetic_cola),
        str(tiny_run / "model"),
        8,
        8,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"][-1]["epoch"] > 0
    # its wall time is the resumed part's only, and the records say so (it read as the whole run's time)
    assert metrics["resumed_from"] == "checkpoint-4"
    assert (
        metrics["trainer_samples_per_second_incl_eval"] is None
    )  # the Trainer's: all 8 steps' samples over 4 steps' time
    assert "s (since --resume from checkpoint-4), " in second.stdout, second.stdout[-1500:]
    assert json.loads((out / "bertpack_run.json").read_text())["status"] == "complete"
    assert not (out / "checkpoints").exists()
    # the resumed process starts at step 4 of 8 (its progress bar never shows step 1) and reaches step 8
    assert "| 8/8 [" in second.stderr and "| 1/8 [" not in second.stderr, second.stderr[-1500:]


# ----------------------------------------------------------------------------- distributed
def test_torchrun_two_cpu_processes(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    from serving.local_server import free_port

    port = str(free_port())  # a free port for the rendezvous (port 0 is not accepted by every torchrun path)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = run_process_group(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            "-m",
            "bertpack.cli",
            "train",
            "--model",
            str(tiny_run / "model"),
            "--data",
            str(synthetic_cola),
            "--out",
            str(out),
            "--max-steps",
            "4",
            "--batch-size",
            "8",
            "--eval-batch-size",
            "4",
        ],
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert (out / "model" / "model.safetensors").is_file()
    assert proc.stdout.count("run written to") == 1  # only rank 0 reports and writes
    # The two processes validated one shared, length-grouped order, each row once: the recorded accuracy is the saved
    # model's on the whole validation set (each process drawing its own order saw some rows twice, others never).
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertpack.data import validation_sentences

    sentences, labels, _ = validation_sentences(synthetic_cola)
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    from bertpack.postprocess import Decision, decide

    with torch.no_grad():
        logits = model(
            **tokenizer(sentences, truncation=True, max_length=64, padding=True, return_tensors="pt")
        ).logits.numpy()
    preds, _ = decide(logits, Decision.from_record(metrics["decision"], 2))  # the labels at the run's threshold
    assert metrics["best"]["accuracy"] == pytest.approx(
        sum(int(p) == y for p, y in zip(preds, labels)) / len(labels), abs=1e-12
    )
    # and the loss is each process's mean, not multiplied by the process count
    assert all(row["train_loss"] < 1.2 for row in metrics["epochs"] if "train_loss" in row), metrics["epochs"]


def test_torchrun_resume_on_cpu_ends_with_the_uninterrupted_weights(
    tmp_path: Path, synthetic_cola: Path, tiny_run: Path
) -> None:
    """--resume under torchrun on CPU: the Trainer loaded optimizer.pt onto accelerate's torch.device("cpu", rank),
    which torch.load cannot restore to ("cpu:0"), so every CPU DDP resume failed. Resumed from an earlier checkpoint,
    the run ends with the uninterrupted run's weights (each process resumes at the right place in the shared order)."""
    from safetensors.torch import load_file

    from serving.local_server import free_port
    from trainer.run_dir import checkpoints

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def torchrun(*args: str) -> subprocess.CompletedProcess:
        return run_process_group(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                "2",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(free_port()),
                "-m",
                "bertpack.cli",
                "train",
                "--out",
                str(out),
                *args,
            ],
            env=env,
            timeout=300,
        )

    # 64 rows, 8 per process: 4 steps per epoch, a checkpoint at every step (the Trainer keeps the last and the best)
    whole = torchrun(
        "--model",
        str(tiny_run / "model"),
        "--data",
        str(synthetic_cola),
        "--max-steps",
        "6",
        "--batch-size",
        "8",
        "--evals-per-epoch",
        "4",
        "--lr",
        "5e-4",
        "--keep-checkpoints",
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    last = checkpoints(out)[-1]
    assert last.name == "checkpoint-6"
    expected = load_file(last / "model.safetensors")
    # a run killed after its second-to-last checkpoint: its last one never written, its marker still "training"
    shutil.rmtree(last)
    marker = json.loads((out / "bertpack_run.json").read_text())
    (out / "bertpack_run.json").write_text(json.dumps({**marker, "status": "training"}))
    resumed = torchrun("--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "bertpack_run.json").read_text())["status"] == "complete"
    got = load_file(out / "checkpoints" / "checkpoint-6" / "model.safetensors")
    assert not expected["classifier.weight"].equal(
        load_file(tiny_run / "model" / "model.safetensors")["classifier.weight"]
    )  # it trained
    assert all(expected[name].equal(got[name]) for name in expected), [
        name for name in expected if not expected[name].equal(got[name])
    ][:5]


# ----------------------------------------------------------------------------- the real thing
@pytest.mark.slow
def test_fine_tune_embedded_model_writes_the_run_contract(tmp_path: Path, cola_dir: Path) -> None:
    out = tmp_path / "run"
    # 569 rows: 57 held out for choosing the checkpoint, 512 trained on
    proc = run_cli(
        "train",
        "--data",
        str(cola_dir),
        "--out",
        str(out),
        "--limit",
        "569",
        "--max-steps",
        "32",
        "--eval-batch-size",
        "256",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "samples/s" in proc.stdout and "best (" in proc.stdout
    # one readable line per validation point, not the Trainer's raw log dicts
    points = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert "{'" not in proc.stdout and len(points) == len(json.loads((out / "metrics.json").read_text())["epochs"]) >= 2
    assert all("epoch " in p and "train loss " in p and "eval loss " in p and "MCC selection " in p for p in points), (
        points
    )

    model_dir = out / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "unacceptable", "1": "acceptable"}
    assert config["architectures"] == ["BertForSequenceClassification"]
    for name in ("model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        assert (model_dir / name).is_file(), name
    assert not list(model_dir.glob("*.bin")), "weights must be safetensors only"

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "mcc", "mcc_in_domain", "mcc_out_domain"):
        assert -1.0 <= metrics["best"][key] <= 1.0
    assert metrics["validation_rows"] == (1043 if cola_dir.name == "cola" else 48) and metrics["train_rows"] == 512
    assert metrics["selection"]["rows"] == 57 and metrics["best"]["selected_on"] == "selection split"
    assert metrics["train_samples_per_second"] > 0 and metrics["seed"] == 42
    assert set(metrics["versions"]) >= {"torch", "transformers", "datasets"}
    assert all(len(h) == 64 for h in metrics["data_sha256"].values()) and len(metrics["data_sha256"]) == 3
    # 512 sentences / 32 = 16 steps per epoch, 2 validations per epoch (every 8 steps) over the 32 steps
    assert len(metrics["epochs"]) == 4 and all("mcc" in r and "train_loss" in r for r in metrics["epochs"])
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "bertpack_run.json").read_text())["status"] == "complete"
    assert not (out / "checkpoints").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temp files left behind"

    # the fine-tuned weights load back and classify
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    assert model.config.num_labels == 2

    _one_line_error(run_cli("train", "--data", str(cola_dir), "--out", str(out)), "already holds a bertpack run")


def test_summary_of_a_run_without_optimizer_steps(tiny_run: Path) -> None:
    """train_samples_per_second is None when no optimizer step ran; the summary says so (it was a TypeError)."""
    from trainer.train import summary

    metrics = json.loads((tiny_run / "metrics.json").read_text())
    metrics.update(
        data="cola",
        train_rows=8,
        validation_rows=8,
        device="cpu",
        world_size=1,
        precision="fp32",
        wall_time_s=3.0,
        train_samples_per_second=None,
    )
    assert "3 s, no training steps" in summary(metrics)
    metrics["train_samples_per_second"] = 126.94
    assert "3 s, 126.9 training samples/s" in summary(metrics)


def test_best_checkpoint_is_the_highest_validation_mcc_and_metrics_name_its_domains(tmp_path, synthetic_cola):
    """8 validations in an 8-step run whose MCC moves: the best checkpoint (metrics.json "best", and the weights
    kept) is the highest-MCC one, and its in/out-of-domain figures are that checkpoint's, each in its own field."""
    from tests.conftest import make_tiny_run
    from trainer.config import TrainConfig
    from trainer.train import train

    run = make_tiny_run(tmp_path / "tiny", distinct=True)
    out = tmp_path / "run"
    metrics = train(
        TrainConfig(
            model=str(run / "model"),
            data=str(synthetic_cola),
            out=out,
            max_steps=8,
            batch_size=8,
            evals_per_epoch=8,
            learning_rate=1e-3,
            seed=0,
            select_on="dev",
        )
    )
    rows = metrics["epochs"]
    assert len(rows) == 8 and len({round(r["mcc"], 6) for r in rows}) > 1, rows  # the MCC moves: a choice to make
    top = max(rows, key=lambda r: r["mcc"])  # max() keeps the first of equal maxima, as the Trainer does
    best = metrics["best"]
    assert best["mcc"] == pytest.approx(top["mcc"]) and best["checkpoint"] == f"checkpoint-{round(top['epoch'] * 8)}"
    assert top["mcc_in_domain"] != pytest.approx(top["mcc_out_domain"])  # so a swapped field shows
    assert (best["mcc_in_domain"], best["mcc_out_domain"]) == (
        pytest.approx(top["mcc_in_domain"]),
        pytest.approx(top["mcc_out_domain"]),
    )
    assert best["accuracy"] == pytest.approx(top["accuracy"])
    assert json.loads((out / "metrics.json").read_text())["best"] == best


def test_balanced_class_weights_change_the_training_loss(tmp_path, synthetic_cola, tiny_run):
    """--class-weights balanced is used by the loss, not only recorded: same run, same seed, only the weights
    differ, so the logged training loss differs."""
    from trainer.config import TrainConfig
    from trainer.train import train

    common = dict(
        model=str(tiny_run / "model"), data=str(synthetic_cola), max_steps=2, batch_size=8, learning_rate=1e-12
    )
    balanced = train(TrainConfig(out=tmp_path / "balanced", class_weights="balanced", **common))
    plain = train(TrainConfig(out=tmp_path / "plain", class_weights="none", **common))
    assert balanced["class_weights"][0] > 1 > balanced["class_weights"][1] and plain["class_weights"] is None
    assert balanced["epochs"][0]["train_loss"] != pytest.approx(plain["epochs"][0]["train_loss"], rel=1e-4)


def test_evals_per_epoch_with_a_short_last_batch(tmp_path, synthetic_cola, tiny_run):
    """60 rows at batch 8 = 8 steps per epoch (the last one short): 2 validations per epoch fall at steps 4 and 8,
    so the run's last weights are validated (with 7 steps per epoch they fell at 3 and 6, never at the end)."""
    from trainer.config import TrainConfig
    from trainer.train import train

    metrics = train(
        TrainConfig(
            model=str(tiny_run / "model"),
            data=str(synthetic_cola),
            out=tmp_path / "run",
            limit=60,
            batch_size=8,
            epochs=1,
            evals_per_epoch=2,
            learning_rate=1e-12,
            select_on="dev",
        )
    )
    assert [r["epoch"] for r in metrics["epochs"]] == [0.5, 1.0]


def test_evals_per_epoch_include_every_epoch_end(tmp_path, synthetic_cola, tiny_run):
    """56 rows at batch 8 = 7 steps per epoch: 2 validations per epoch fall at steps 4 and 7 of each epoch. A fixed
    interval of 7 // 2 = 3 steps validated at 3, 6, 9, 12: never the end of an epoch, nor the run's last weights."""
    from trainer.config import TrainConfig
    from trainer.train import train

    metrics = train(
        TrainConfig(
            model=str(tiny_run / "model"),
            data=str(synthetic_cola),
            out=tmp_path / "run",
            limit=56,
            batch_size=8,
            epochs=2,
            evals_per_epoch=2,
            learning_rate=1e-12,
            select_on="dev",
        )
    )
    assert [r["epoch"] for r in metrics["epochs"]] == pytest.approx([4 / 7, 1.0, 11 / 7, 2.0], abs=1e-3)


def test_resume_in_mid_epoch_replays_the_interrupted_order(tmp_path, synthetic_cola, tiny_run, monkeypatch):
    """Length-grouped batches (the default) are drawn from (seed, epoch), so a run resumed from a checkpoint in the
    middle of an epoch trains on the rest of that epoch's batches and ends with the uninterrupted run's weights.
    (transformers' own sampler drew a new order from the random state restored at the checkpoint.)"""
    from safetensors.torch import load_file

    from trainer.callbacks import StepTimer
    from trainer.config import TrainConfig
    from trainer.run_dir import resume_config
    from trainer.train import train

    recipe = dict(
        model=str(tiny_run / "model"),
        data=str(synthetic_cola),
        limit=56,
        batch_size=8,
        max_steps=13,
        evals_per_epoch=2,
        learning_rate=5e-4,
        keep_checkpoints=True,
        select_on="dev",
    )  # 7 steps per epoch: checkpoints at 4, 7, 11 and 13
    train(TrainConfig(out=tmp_path / "whole", **recipe))

    class Crash(Exception):
        pass

    def crash_in_step_12(self, args, state, control, **kwargs):  # after checkpoint-11, step 4 of epoch 2
        if state.global_step == 12:
            raise Crash

    with monkeypatch.context() as patch:
        patch.setattr(StepTimer, "on_step_end", crash_in_step_12)
        with pytest.raises(Crash):
            train(TrainConfig(out=tmp_path / "resumed", **recipe))
    assert json.loads((tmp_path / "resumed" / "bertpack_run.json").read_text())["status"] == "failed"
    train(resume_config(tmp_path / "resumed", {}))
    a = load_file(tmp_path / "whole" / "checkpoints" / "checkpoint-13" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoints" / "checkpoint-13" / "model.safetensors")
    assert not a["classifier.weight"].equal(
        load_file(tiny_run / "model" / "model.safetensors")["classifier.weight"]
    )  # it trained
    assert all(a[name].equal(b[name]) for name in a), [name for name in a if not a[name].equal(b[name])][:5]


def test_seeded_length_sampler_depends_on_seed_and_epoch_only():
    """The order is a function of (seed, epoch): the same in every process and after --resume, new each epoch."""
    import torch

    from trainer.batching import SeededLengthSampler

    lengths = [5, 9, 3, 12, 7, 4, 8, 10, 6, 11, 2, 13, 14, 1, 15, 16]
    a, b = SeededLengthSampler(lengths, 4, seed=42), SeededLengthSampler(lengths, 4, seed=42)
    torch.manual_seed(0)
    first = list(a)
    torch.manual_seed(1)  # the global random state does not matter
    assert list(b) == first and sorted(first) == list(range(len(lengths)))
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(SeededLengthSampler(lengths, 4, seed=7)) != first
