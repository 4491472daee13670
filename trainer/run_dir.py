"""The run folder's life cycle, around the training in train.py: refuse an --out that is not ours, find what
--resume continues from, make OUT the run folder for the run's duration (an --overwrite keeps the old run until
the new one succeeds; a failed run with a checkpoint stays, marked "failed", for --resume), and turn a failure
into a one-line error where the user can act on it."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bertpack.errors import BertpackError, Terminated, first_line, storage_problem
from bertpack.files import remove_leftovers
from bertpack.locks import pid_running
from bertpack.run_marker import RUN_KIND, RUN_MARKER, write_run_marker
from trainer.config import NOT_RECIPE, RESUME_MAY_CHANGE, TrainConfig, option_name


# --------------------------------------------------------------------------- output folder checks
def check_out_dir(cfg: TrainConfig) -> None:
    """Refuse to clobber a folder that is not ours; --resume needs an interrupted run with a checkpoint;
    an --out that cannot be written is an error now, not after the model has loaded."""
    out = cfg.out
    if is_main_process():  # before any refusal below: OUT then holds the killed run, not this one
        for left in killed_overwrite_backups(out):
            print(
                f"warning: {left} holds the run that was in {out} before a `bertpack train --overwrite` was killed "
                f"(it could not put it back); move it elsewhere to keep it, or delete it",
                file=sys.stderr,
                flush=True,
            )
    check_resume_overwrite(cfg.resume, cfg.overwrite)
    try:
        if out.exists() and not out.is_dir():
            raise BertpackError(f"--out {out} is a file, not a folder; pass a folder for the run, e.g. --out runs/cola")
        _check_writable(out, replacing=cfg.overwrite)
        marker = out / RUN_MARKER
        if cfg.resume:
            status = read_marker(out).get("status")
            if status == "complete":
                raise BertpackError(
                    f"--resume: the run in {out} is already complete, there is nothing to resume; pass --overwrite to "
                    "train it again, or choose another --out"
                )
            if not has_checkpoint(out):
                raise BertpackError(
                    f"--resume: {out} has no Trainer checkpoint yet (it stopped before its first checkpoint); start "
                    "again with --overwrite"
                )
            saved = checkpoints(out)
            if problem := damaged_checkpoint(saved[-1]):  # the one the Trainer resumes from
                fix = (
                    f"delete it (rm -r {saved[-1]}) to resume from {saved[-2].name}"
                    if len(saved) > 1
                    else "start again with --overwrite"
                )
                raise BertpackError(
                    f"--resume: the last checkpoint {saved[-1]} is damaged ({problem}), probably cut off "
                    f"while it was written; {fix}"
                )
            return
        if out.exists() and any(out.iterdir()) and not cfg.overwrite:
            if marker.is_file():
                status = read_marker(out).get("status")
                if status == "complete":
                    hint = "pass --overwrite to replace it or choose another --out"
                elif has_checkpoint(out):
                    hint = "pass --resume to continue it or --overwrite to start over"
                else:
                    hint = "it has no checkpoint to resume from; pass --overwrite to start over or choose another --out"
                # this process holds OUT's lock: a run that still says "training" is one whose process was killed
                what = "training, but its bertpack train was killed" if status == "training" else status
                raise BertpackError(f"{out} already holds a bertpack run ({what}); {hint}")
            raise BertpackError(
                f"{out} exists and is not a bertpack run; refusing to write into it (choose another --out, or pass "
                "--overwrite)"
            )
    except OSError as exc:  # e.g. a parent folder without search permission: even exists() cannot tell
        raise BertpackError(
            f"--out {out}: cannot inspect {exc.filename or out} ({exc.strerror or exc}); choose a folder you can "
            "write to"
        ) from None


def is_main_process() -> bool:
    """Rank 0 under torchrun (RANK), or a plain single process: the one that owns the run folder and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def check_resume_overwrite(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise BertpackError(
            "--resume and --overwrite contradict each other (--resume continues the run in --out, --overwrite "
            "replaces it); pass one of them"
        )


def _check_writable(out: Path, replacing: bool) -> None:
    """Create and remove a probe folder where the run will write: in OUT when it exists, in the nearest
    existing parent otherwise (and beside OUT too when --overwrite will move the old run aside)."""
    places = []
    if out.is_dir():
        places.append(out)
        if replacing and any(out.iterdir()):
            places.append(out.parent)
    else:
        existing = next(p for p in out.parents if p.exists())
        if not existing.is_dir():
            raise BertpackError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
        places.append(existing)
    for place in places:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".bertpack-probe-", dir=place))
        except OSError as exc:
            raise BertpackError(
                f"--out {out}: cannot write in {place} ({exc.strerror or exc}); choose a folder you can write to, or "
                "fix its permissions"
            ) from None


def read_marker(out: Path) -> dict:
    """OUT/bertpack_run.json, or a one-line error that says what to do without it."""
    marker = Path(out) / RUN_MARKER
    if not marker.is_file():
        raise BertpackError(f"--resume: {out} holds no bertpack run to resume; drop --resume to start a new one")
    try:
        body = json.loads(marker.read_text())
        if not isinstance(body, dict) or body.get("kind") != RUN_KIND:
            raise ValueError("not a bertpack run marker")
    except (OSError, ValueError) as exc:
        raise BertpackError(
            f"{marker} is unreadable ({exc}); pass --overwrite to start the run over, or choose another --out"
        ) from None
    return body


def damaged_checkpoint(folder: Path) -> str | None:
    """What is wrong with a Trainer checkpoint folder that --resume would load (None if nothing): its state
    must parse and its weights' safetensors header must match the file (both read without loading the weights)."""
    from safetensors import safe_open

    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError) as exc:
        return f"trainer_state.json: {exc.strerror if isinstance(exc, OSError) else 'not valid JSON'}"
    from bertpack.models import has_safe_weights

    if not has_safe_weights(folder):  # the Trainer would load a pytorch_model.bin (a pickle) instead
        return "no model.safetensors weights"
    weights = sorted(folder.glob("*.safetensors"))
    for path in weights:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError
            return f"{path.name}: {first_line(exc, 120)}"
    return None


def checkpoints(out: Path) -> list[Path]:
    """The Trainer checkpoint folders in OUT/checkpoints (its own naming: checkpoint-<step>), oldest step first."""
    found = [
        p
        for p in (Path(out) / "checkpoints").glob("checkpoint-*")
        if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def has_checkpoint(out: Path) -> bool:
    """Whether OUT/checkpoints holds a folder the Trainer can resume from."""
    return bool(checkpoints(out))


def resume_config(out: Path, given: dict) -> TrainConfig:
    """The config to --resume OUT with: the run's recorded recipe, with the options given on the command line.

    Options that only lengthen the run or change what is kept (RESUME_MAY_CHANGE) win over the recording;
    any other option that differs from it is refused, since the checkpoint's optimizer and schedule belong to it.
    """
    recorded = read_marker(out).get("config") or {}
    if not isinstance(recorded, dict) or not recorded.get("data"):
        raise BertpackError(
            f"--resume: {out / RUN_MARKER} records no training config (written by an older bertpack?); start again "
            "with --overwrite"
        )
    cfg = TrainConfig.from_dict(recorded)
    for name, value in given.items():
        if name in NOT_RECIPE:
            continue
        before = getattr(cfg, name)
        if name not in RESUME_MAY_CHANGE and not _same_setting(name, before, value):
            raise BertpackError(
                f"--resume: {option_name(name)} {value} differs from the run's recorded {before}; a resumed run keeps "
                "its recipe: "
                f"drop {option_name(name)} (only --epochs, --max-steps, --eval-batch-size and --keep-checkpoints may "
                "change), "
                "or start a new run with --overwrite or another --out"
            )
        setattr(cfg, name, value)
    cfg.out, cfg.resume, cfg.overwrite = Path(out), True, False
    return cfg


def _same_setting(name: str, a, b) -> bool:
    if a == b:
        return True
    if name in ("data", "model") and isinstance(a, str) and isinstance(b, str):
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()  # the same folder spelled differently
    return False


@contextlib.contextmanager
def run_folder(cfg: TrainConfig, is_main: bool) -> Iterator[None]:
    """Make OUT the run folder for the body, called once the inputs are checked and the model has loaded.

    A new run is written in OUT itself (so --resume finds its checkpoints after a crash); with --overwrite the
    old content is first moved aside beside OUT and deleted only once the new run succeeded. When the body
    fails: an --overwrite run puts the old content back, a new run without a checkpoint leaves nothing behind,
    and a run with a checkpoint (or a resumed one) stays, marked "failed" with the reason, for --resume.
    Only the main process touches the folder; the others write into OUT/checkpoints through the Trainer.
    """
    out = cfg.out
    if not is_main:
        yield
        return
    backup: Path | None = None
    created = [p for p in (out, *out.parents) if not p.exists()]  # folders this run makes, deepest first
    try:  # from the first change on, so a Ctrl-C at any point is undone like a failure
        if not cfg.resume:
            if cfg.overwrite and out.is_dir() and any(out.iterdir()):
                aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
                os.replace(out, aside)
                backup, created = aside, [out]
            out.mkdir(parents=True, exist_ok=True)
        else:  # the final model/ of a resumed run killed while it was saved (staging_dir's folders beside it)
            remove_leftovers(out / "model")
        write_run_marker(out, "training", cfg.to_dict())
        yield
    except BaseException as exc:
        reason = (
            "terminated (SIGTERM)"
            if isinstance(exc, Terminated)
            else "interrupted (Ctrl-C)"
            if isinstance(exc, KeyboardInterrupt)
            else one_line(exc)
        )
        storage = storage_problem(exc, out)  # now: the free space is read before the cleanup below frees some
        saved = checkpoints(out) if backup is None else []
        if saved and damaged_checkpoint(saved[-1]):  # cut off by this failure (a full disk, Ctrl-C while saving):
            shutil.rmtree(saved[-1], ignore_errors=True)  # --resume could not load it, and it holds the space
        if backup is not None:
            shutil.rmtree(out, ignore_errors=True)
            os.replace(backup, out)
            kept = f"the previous content of {out} is back unchanged"
        elif not cfg.resume and not has_checkpoint(out):
            shutil.rmtree(out, ignore_errors=True)
            for folder in created[1:]:  # parents made for this run, if nothing else appeared in them
                with contextlib.suppress(OSError):
                    folder.rmdir()
            if not created:  # OUT was an empty folder before: leave it empty, not gone
                out.mkdir(exist_ok=True)
            kept = f"nothing was kept in {out} (no checkpoint yet); start the run again"
        else:
            try:
                write_run_marker(out, "failed", cfg.to_dict(), reason=reason)
                kept = (
                    f"{out} is marked failed and keeps its checkpoints: continue with bertpack train --resume "
                    f"--out {out}"
                )
            except OSError as marker_exc:  # the disk that stopped the run may not take the marker either
                kept = (
                    f"{out} keeps its checkpoints (it could not be marked failed: "
                    f"{marker_exc.strerror or marker_exc}): "
                    f"continue with bertpack train --resume --out {out}"
                )
        err = _user_error(exc, kept, storage)
        if err is exc:
            raise
        raise err from None
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def killed_overwrite_backups(out: Path) -> list[Path]:
    """Old runs that an --overwrite killed outright (SIGKILL, power loss: no cleanup ran) left beside OUT
    as .NAME.replaced-PID, PID no longer running. Never deleted here: they may be the user's only copy."""
    found = []
    for path in sorted(out.parent.glob(f".{glob.escape(out.name)}.replaced-*")):
        pid = path.name.rsplit("-", 1)[1]
        if pid.isdigit() and not pid_running(int(pid)):
            found.append(path)
    return found


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _user_error(exc: BaseException, kept: str, storage: tuple[str, str] | None = None) -> BaseException:
    """What a failure inside the run becomes: a one-line error for what the user can act on (Ctrl-C, a full or
    unwritable disk (`storage`: bertpack.errors.storage_problem), GPU memory), the original exception (with a note on
    what was kept) for anything else."""
    if isinstance(exc, (KeyboardInterrupt, Terminated)):
        err = BertpackError(f"{'terminated (SIGTERM)' if isinstance(exc, Terminated) else 'interrupted'}; {kept}")
        err.exit_code = Terminated.exit_code if isinstance(exc, Terminated) else 130
        return err
    if isinstance(exc, BertpackError):
        return BertpackError(f"{exc}; {kept}")
    if isinstance(
        exc, pickle.UnpicklingError
    ):  # torch.load(weights_only=True) refused a --resume checkpoint's state file
        return BertpackError(
            "the checkpoint --resume loads holds a state file (optimizer.pt, scheduler.pt or rng_state.pth) with "
            "objects other than tensors and plain data, which bertpack never unpickles: it was not written by "
            f"bertpack train; delete that checkpoint to resume from the one before, or retrain with --overwrite; {kept}"
        )
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
        return BertpackError(f"out of GPU memory; lower --batch-size or --eval-batch-size or --max-length; {kept}")
    if storage is not None:  # a full disk reaches here as OSError, safetensors' or torch's own errors
        problem, fix = storage
        return BertpackError(f"training stopped: {problem}; {fix}; {kept}")
    if isinstance(exc, OSError):
        return BertpackError(
            f"training stopped writing {exc.filename or 'the run folder'} ({exc.strerror or exc}): free disk space or "
            f"fix permissions; {kept}"
        )
    exc.add_note(kept)
    return exc
