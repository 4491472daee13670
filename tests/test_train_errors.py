"""`bertpack train` on bad inputs and failed runs: one `error:` line each, and nothing written half-way
(no folder from a run that never started, an --overwrite that fails keeps the old run, a failed run
with checkpoints is marked "failed" so --resume and its hints agree). Every test runs the real CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertpack.errors import BertpackError
from tests.conftest import REPO, run_cli, sigint_at_default, write_synthetic_cola
from tests.test_train import _one_line_error

QUICK = ["--max-steps", "2", "--limit", "16", "--batch-size", "8"]


@pytest.fixture(scope="module")
def long_cola(tmp_path_factory) -> Path:
    """4000 training sentences: at --batch-size 1 --evals-per-epoch 1 the first validation (and checkpoint) is 4000
    steps away, far past the moment the interrupt tests stop training."""
    return write_synthetic_cola(tmp_path_factory.mktemp("long-cola"), train_rows=4000)


# A run that is interrupted before its first checkpoint.
NO_CHECKPOINT_YET = ["--max-steps", "100000", "--batch-size", "1", "--evals-per-epoch", "1"]


def _train(tiny_run: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(tiny_run / "model"), "--data", str(data), "--out", str(out), *extra]


def _run_cli_unprivileged(*args: str) -> subprocess.CompletedProcess:
    """`bertpack ARGS` in a process that file permissions apply to: root ignores them (CAP_DAC_OVERRIDE),
    so as root drop the capabilities that let it, keeping uid 0 (its own files stay readable)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        caps = [setpriv, "--bounding-set=-dac_override,-dac_read_search"] if setpriv else []
        if not caps or subprocess.run([*caps, "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: file permissions are not enforced")
        prefix = caps
    return subprocess.run(
        [*prefix, sys.executable, "-m", "bertpack.cli", *args],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _interrupt_once_training(
    args: list[str], out: Path, max_steps: int, sig: int = signal.SIGINT
) -> subprocess.CompletedProcess:
    """Start `bertpack ARGS`, send Ctrl-C (SIGINT, or `sig`) once the run folder records this run (status "training",
    this --max-steps) and the Trainer is going, return the finished process."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertpack.cli", *args],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_at_default,
    )
    deadline = time.monotonic() + 240
    marker = out / "bertpack_run.json"
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            body = json.loads(marker.read_text())
        except (OSError, ValueError):
            body = {}
        if (
            body.get("status") == "training"
            and body.get("config", {}).get("max_steps") == max_steps
            and (out / "checkpoints").is_dir()
        ):
            break
        time.sleep(0.05)
    time.sleep(1.5)  # well into the optimizer steps
    proc.send_signal(sig)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()  # a 100000-step run left going would hold both cores for the rest of the suite
        stdout, stderr = proc.communicate()
        pytest.fail(f"training still running 240 s after Ctrl-C; stderr tail:\n{stderr[-2000:]}")
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    done.pid = proc.pid  # type: ignore[attr-defined]  # names the .NAME.replaced-PID folder an --overwrite makes
    return done


def _interrupted_error(proc: subprocess.CompletedProcess, fragment: str, code: int = 130) -> None:
    """Exit 130 (143 for SIGTERM) and one `error:` line; tqdm leaves its bar (carriage returns, cursor escapes) before
    it on the line."""
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line[line.index("error:") :] for line in re.split(r"[\r\n]", proc.stderr) if "error:" in line]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr[-2000:]


def _finished_run(tiny_run: Path, data: Path, out: Path, *extra: str) -> dict:
    proc = run_cli(*_train(tiny_run, data, out, *QUICK, *extra))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "bertpack_run.json").read_text())


# ----------------------------------------------------------------------------- bad --out
def test_out_that_is_a_file(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    _one_line_error(run_cli(*_train(tiny_run, synthetic_cola, notes)), "is a file, not a folder")
    _one_line_error(run_cli(*_train(tiny_run, synthetic_cola, notes, "--overwrite")), "is a file, not a folder")
    _one_line_error(run_cli(*_train(tiny_run, synthetic_cola, notes / "run")), "is a file, not a folder")
    assert notes.read_text() == "precious"


def test_unwritable_out_folder(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        proc = _run_cli_unprivileged(*_train(tiny_run, synthetic_cola, locked / "run"))
        _one_line_error(proc, f"cannot write in {locked}")
        assert not (locked / "run").exists()
    finally:
        locked.chmod(0o755)


def test_unreadable_data_file(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    data = tmp_path / "cola"
    shutil.copytree(synthetic_cola, data)
    dev = data / "raw" / "in_domain_dev.tsv"
    dev.chmod(0)
    try:
        proc = _run_cli_unprivileged(*_train(tiny_run, data, tmp_path / "r"))
        _one_line_error(proc, f"{dev}: cannot read it")
        assert "Generating train split" not in proc.stderr, "every file is checked before any is loaded"
    finally:
        dev.chmod(stat.S_IRUSR | stat.S_IWUSR)
    (data / "raw").chmod(0)
    try:
        _one_line_error(_run_cli_unprivileged(*_train(tiny_run, data, tmp_path / "r")), "cannot read")
    finally:
        (data / "raw").chmod(0o755)
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- a model that fails to load
def test_damaged_model_is_one_line_and_leaves_no_folder(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_run / "model", damaged)
    with open(damaged / "model.safetensors", "r+b") as fh:
        fh.truncate(1000)
    out = tmp_path / "runs" / "new"
    _one_line_error(
        run_cli("train", "--model", str(damaged), "--data", str(synthetic_cola), "--out", str(out)),
        "cannot load its weights",
    )
    assert not (tmp_path / "runs").exists()
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_run / "model" / name, no_tokenizer / name)
    _one_line_error(
        run_cli("train", "--model", str(no_tokenizer), "--data", str(synthetic_cola), "--out", str(out)),
        "cannot load its tokenizer",
    )
    assert not (tmp_path / "runs").exists()
    # a run folder where a checkpoint is expected: point at its model
    _one_line_error(
        run_cli("train", "--model", str(tiny_run), "--data", str(synthetic_cola), "--out", str(out)),
        f"is a bertpack run folder, not a checkpoint; to start from its model pass --model {tiny_run / 'model'}",
    )
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- option ranges
@pytest.mark.parametrize(
    "option, value",
    [
        ("--classifier-dropout", "1.5"),
        ("--classifier-dropout", "-0.1"),
        ("--eval-batch-size", "0"),
        ("--head-lr-multiplier", "-5"),
        ("--head-lr-multiplier", "0"),
        ("--weight-decay", "-1"),
        ("--max-steps", "0"),
        ("--max-steps", "-2"),
        ("--seed", "-1"),
        ("--batch-size", "0"),
        ("--max-length", "4"),
        ("--limit", "0"),
        ("--warmup", "1"),
        ("--layer-decay", "0"),
        ("--lr", "nan"),
        ("--epochs", "inf"),
    ],
)
def test_out_of_range_option(tmp_path: Path, synthetic_cola: Path, tiny_run: Path, option: str, value: str) -> None:
    proc = run_cli(*_train(tiny_run, synthetic_cola, tmp_path / "r"), option, value)
    _one_line_error(proc, option)
    assert f"e.g. {option} " in proc.stderr, proc.stderr  # names a value that works
    assert not (tmp_path / "r").exists()


def test_negative_epochs_with_max_steps(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    _one_line_error(
        run_cli(*_train(tiny_run, synthetic_cola, tmp_path / "r", "--epochs", "-1", "--max-steps", "3")), "--epochs"
    )
    assert not (tmp_path / "r").exists()


def test_python_callers_get_the_same_range_checks(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    """train(TrainConfig(...)) checks the recipe as the CLI does (the checks lived in the CLI only)."""
    from trainer.config import TrainConfig
    from trainer.train import train

    with pytest.raises(BertpackError, match=r"--layer-decay 1\.5 is out of range"):
        train(TrainConfig(model=str(tiny_run / "model"), data=str(synthetic_cola), out=tmp_path / "r", layer_decay=1.5))
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- --overwrite, failures mid-run
def test_overwrite_keeps_the_old_run_until_the_new_one_succeeds(
    tmp_path: Path, synthetic_cola: Path, long_cola: Path, tiny_run: Path
) -> None:
    out = tmp_path / "run"
    assert _finished_run(tiny_run, synthetic_cola, out)["status"] == "complete"
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # files get the usual modes (umask), not mkstemp's 0600 / mkdtemp's 0700
    umask = os.umask(0o022)
    os.umask(umask)
    for path, base in (
        (out / "model", 0o777),
        (out / "model" / "model.safetensors", 0o666),
        (out / "bertpack_run.json", 0o666),
        (out / "metrics.json", 0o666),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == base & ~umask, path

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_run / "model", damaged)
    with open(damaged / "model.safetensors", "r+b") as fh:
        fh.truncate(1000)
    _one_line_error(
        run_cli("train", "--model", str(damaged), "--data", str(synthetic_cola), "--out", str(out), "--overwrite"),
        "cannot load its weights",
    )
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    # Ctrl-C in the middle of the new run: the old run comes back, nothing of the new one stays
    proc = _interrupt_once_training(_train(tiny_run, long_cola, out, "--overwrite", *NO_CHECKPOINT_YET), out, 100000)
    _interrupted_error(proc, "previous content")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_run_killed_during_overwrite_is_pointed_out(
    tmp_path: Path, synthetic_cola: Path, long_cola: Path, tiny_run: Path
) -> None:
    """SIGKILL leaves no chance to put the old run back: the next train on that --out names where it is."""
    out = tmp_path / "run"
    _finished_run(tiny_run, synthetic_cola, out)
    killed = _interrupt_once_training(
        _train(tiny_run, long_cola, out, "--overwrite", *NO_CHECKPOINT_YET), out, 100000, sig=signal.SIGKILL
    )
    assert killed.returncode == -signal.SIGKILL
    left = tmp_path / f".run.replaced-{killed.pid}"
    assert json.loads((left / "bertpack_run.json").read_text())["status"] == "complete"
    # OUT now holds the killed run, so a plain train is refused: the warning comes first, naming the old run
    refused = run_cli(*_train(tiny_run, synthetic_cola, out, *QUICK))
    assert (
        refused.returncode == 2
        and "already holds a bertpack run (training, but its bertpack train was killed)" in refused.stderr
    ), refused.stderr[-2000:]
    again = run_cli(*_train(tiny_run, synthetic_cola, out, "--overwrite", *QUICK))
    assert again.returncode == 0, again.stderr[-2000:]
    for proc in (refused, again):
        warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
        assert (
            len(warnings) == 1
            and str(left) in warnings[0]
            and "move it elsewhere to keep it, or delete it" in warnings[0]
        ), proc.stderr[-2000:]
    assert left.is_dir()  # the user's old run is never deleted for them


def test_interrupted_new_run_without_checkpoint_leaves_nothing(tmp_path: Path, long_cola: Path, tiny_run: Path) -> None:
    out = tmp_path / "runs" / "new"
    proc = _interrupt_once_training(_train(tiny_run, long_cola, out, *NO_CHECKPOINT_YET), out, 100000)
    _interrupted_error(proc, "nothing was kept")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "sig, code, reason",
    [(signal.SIGINT, 130, "interrupted (Ctrl-C)"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
    ids=["ctrl-c", "sigterm"],
)
def test_interrupted_resume_is_marked_failed_and_resumable(
    tmp_path: Path, synthetic_cola: Path, tiny_run: Path, sig: int, code: int, reason: str
) -> None:
    """SIGTERM (timeout, docker stop, Kubernetes) is handled as Ctrl-C is, with its own exit status and reason."""
    out = tmp_path / "run"
    marker = _finished_run(tiny_run, synthetic_cola, out, "--keep-checkpoints")
    (out / "bertpack_run.json").write_text(json.dumps({**marker, "status": "training"}))  # as if it had crashed
    proc = _interrupt_once_training(
        ["train", "--out", str(out), "--resume", "--max-steps", "100000"], out, 100000, sig=sig
    )
    _interrupted_error(proc, "--resume --out", code)
    body = json.loads((out / "bertpack_run.json").read_text())
    assert body["status"] == "failed" and body["reason"] == reason
    assert any((out / "checkpoints").glob("checkpoint-*"))
    _one_line_error(run_cli(*_train(tiny_run, synthetic_cola, out)), "(failed); pass --resume")


# ----------------------------------------------------------------------------- --resume
def test_resume_of_a_complete_run_says_so(tmp_path: Path, synthetic_cola: Path, tiny_run: Path) -> None:
    out = tmp_path / "run"
    _finished_run(tiny_run, synthetic_cola, out)
    proc = run_cli("train", "--out", str(out), "--resume")
    _one_line_error(proc, "already complete")
    assert "--overwrite" in proc.stderr and "no Trainer checkpoint" not in proc.stderr
    _one_line_error(run_cli("train", "--out", str(out), "--resume", "--overwrite"), "contradict")


def test_resume_from_a_damaged_last_checkpoint_names_it_and_the_fix(
    tmp_path: Path, synthetic_cola: Path, tiny_run: Path
) -> None:
    """A checkpoint cut off while it was written (a kill, a full disk) made --resume fail with a traceback, and the
    run's message then said to --resume again. Now: one line naming the checkpoint, and a fix that works."""
    out = tmp_path / "run"
    marker = _finished_run(tiny_run, synthetic_cola, out, "--keep-checkpoints")
    (out / "bertpack_run.json").write_text(json.dumps({**marker, "status": "training"}))  # as if it had crashed
    last = out / "checkpoints" / "checkpoint-2"
    weights = last / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    proc = run_cli("train", "--out", str(out), "--resume")
    _one_line_error(proc, f"--resume: the last checkpoint {last} is damaged (model.safetensors: ")
    assert f"delete it (rm -r {last}) to resume from checkpoint-1" in proc.stderr, proc.stderr
    shutil.rmtree(last)  # the fix it names
    proc = run_cli("train", "--out", str(out), "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "bertpack_run.json").read_text())["status"] == "complete"


def test_resume_refuses_a_different_recipe_and_a_run_without_checkpoint(
    tmp_path: Path, synthetic_cola: Path, tiny_run: Path
) -> None:
    out = tmp_path / "run"
    marker = _finished_run(tiny_run, synthetic_cola, out, "--keep-checkpoints")
    (out / "bertpack_run.json").write_text(json.dumps({**marker, "status": "training"}))
    for option, value in (("--lr", "3e-5"), ("--batch-size", "16"), ("--data", str(tmp_path)), ("--seed", "7")):
        proc = run_cli("train", "--out", str(out), "--resume", option, value)
        _one_line_error(proc, f"{option} ")
        assert "differs from the run's recorded" in proc.stderr, proc.stderr
    shutil.rmtree(out / "checkpoints")
    _one_line_error(run_cli("train", "--out", str(out), "--resume"), "no Trainer checkpoint")
    _one_line_error(run_cli(*_train(tiny_run, synthetic_cola, out)), "no checkpoint to resume from; pass --overwrite")


def _checkpoint(folder: Path, tiny_run: Path, damaged: bool = False) -> None:
    """A Trainer checkpoint folder as damaged_checkpoint() reads it (state + safetensors weights)."""
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    weights = (tiny_run / "model" / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[:-1000] if damaged else weights)


def test_resume_checks_the_newest_checkpoint_by_step(tmp_path, tiny_run):
    """checkpoint-18 is newer than checkpoint-9 (by step, not by name): --resume loads and checks checkpoint-18."""
    from trainer.config import TrainConfig
    from trainer.run_dir import check_out_dir, checkpoints

    out = tmp_path / "run"
    for step in (9, 18):
        _checkpoint(out / "checkpoints" / f"checkpoint-{step}", tiny_run, damaged=step == 18)
    (out / "checkpoints" / "checkpoint-last").mkdir()  # not the Trainer's naming: ignored
    (out / "bertpack_run.json").write_text(json.dumps({"kind": "bertpack-run", "status": "training", "config": {}}))
    assert [p.name for p in checkpoints(out)] == ["checkpoint-9", "checkpoint-18"]
    with pytest.raises(BertpackError) as err:
        check_out_dir(TrainConfig(out=out, resume=True))
    assert f"the last checkpoint {out / 'checkpoints' / 'checkpoint-18'} is damaged" in str(err.value)
    assert "to resume from checkpoint-9" in str(err.value)


def test_resume_config_keeps_the_recipe_and_takes_what_may_change(tmp_path, synthetic_cola, monkeypatch):
    """--resume: --epochs, --max-steps, --eval-batch-size and --keep-checkpoints may change (cli help); the same
    --data spelled differently (relative, trailing slash) is the same setting; another recipe option is refused."""
    from trainer.config import TrainConfig
    from trainer.run_dir import resume_config

    out = tmp_path / "run"
    out.mkdir()
    recorded = TrainConfig(data=str(synthetic_cola.resolve()), out=out, learning_rate=3e-5, epochs=2.0)
    (out / "bertpack_run.json").write_text(
        json.dumps({"kind": "bertpack-run", "status": "failed", "config": recorded.to_dict()})
    )
    monkeypatch.chdir(synthetic_cola.parent)
    cfg = resume_config(
        out,
        {
            "data": f"./{synthetic_cola.name}/",
            "epochs": 5.0,
            "max_steps": 40,
            "eval_batch_size": 16,
            "keep_checkpoints": True,
            "learning_rate": 3e-5,
        },
    )
    assert (cfg.epochs, cfg.max_steps, cfg.eval_batch_size, cfg.keep_checkpoints, cfg.learning_rate) == (
        5.0,
        40,
        16,
        True,
        3e-5,
    )
    assert Path(cfg.data).resolve() == synthetic_cola.resolve() and (cfg.out, cfg.resume, cfg.overwrite) == (
        out,
        True,
        False,
    )
    with pytest.raises(BertpackError, match="--lr 0.0001 differs from the run's recorded 3e-05"):
        resume_config(out, {"learning_rate": 1e-4})
    with pytest.raises(BertpackError, match="--data .* differs"):
        resume_config(out, {"data": str(tmp_path)})


def test_overwrite_in_a_read_only_parent_is_refused_before_anything_moves(tmp_path, synthetic_cola, tiny_run):
    """--overwrite moves the old run aside beside OUT: a parent that cannot be written is refused up front
    (else the move fails mid-run and the failure path deletes the old run's files)."""
    locked = tmp_path / "locked"
    out = locked / "run"
    out.mkdir(parents=True)
    (out / "bertpack_run.json").write_text(json.dumps({"kind": "bertpack-run", "status": "complete", "config": {}}))
    (out / "metrics.json").write_text('{"precious": true}')
    locked.chmod(0o555)
    try:
        proc = _run_cli_unprivileged(
            *_train(tiny_run, synthetic_cola, out, "--overwrite", "--max-steps", "2", "--batch-size", "8")
        )
        _one_line_error(proc, f"cannot write in {locked}")
    finally:
        locked.chmod(0o755)
    assert (out / "metrics.json").read_text() == '{"precious": true}'
    assert json.loads((out / "bertpack_run.json").read_text())["status"] == "complete"


def test_failed_run_leaves_an_empty_out_folder_as_it_found_it(tmp_path, synthetic_cola, tiny_run, monkeypatch):
    """A new run that fails before its first checkpoint removes what it made: an --out that existed (empty) stays,
    empty; parents it created go. (Fault injected in the library: Trainer.train raises.)"""
    import transformers

    from trainer.config import TrainConfig
    from trainer.train import train

    def fail(self, *args, **kwargs):
        raise RuntimeError("injected failure before the first checkpoint")

    monkeypatch.setattr(transformers.Trainer, "train", fail)
    common = dict(model=str(tiny_run / "model"), data=str(synthetic_cola), max_steps=2, batch_size=8)
    out = tmp_path / "empty"
    out.mkdir()
    with pytest.raises(RuntimeError, match="injected") as err:
        train(TrainConfig(out=out, **common))
    assert out.is_dir() and list(out.iterdir()) == []
    assert any("nothing was kept" in note for note in getattr(err.value, "__notes__", []))
    with pytest.raises(RuntimeError, match="injected"):
        train(TrainConfig(out=tmp_path / "made" / "run", **common))
    assert not (tmp_path / "made").exists()
