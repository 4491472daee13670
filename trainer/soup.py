"""`bertpack soup`: average the weights of fine-tuned runs of one pretrained model (a "model soup", Wortsman et al.
2022) into a new run folder that export, parity, the service and bench take like any other.

Members are run folders (RUN/model) or checkpoints of a run kept with --keep-checkpoints (RUN/checkpoints/checkpoint-N:
averaging the last ones of one run). They must share the model, the data and the held-out selection rows: the soup
is chosen (uniform, or greedy: members added best first while the selection MCC does not drop) and its temperature
and threshold fitted on those rows, then the validation split is scored once.

Run folder written (atomically, like `bertpack train`'s):
    OUT/model/            the averaged weights with the first member's config and tokenizer
    OUT/metrics.json      each member's figures, both soups' selection MCC, the soup's held-out figures and decision
    OUT/bertpack_run.json status "complete", the members' recipe and the member paths
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from bertpack.data import DataSpec, file_hashes, hold_out, is_hub, load_data
from bertpack.errors import BertpackError
from bertpack.files import staging_dir, write_json_atomic
from bertpack.locks import writing
from bertpack.machine import library_versions
from bertpack.metrics import mcc, scores
from bertpack.models import has_safe_weights
from bertpack.postprocess import decide
from bertpack.run_marker import RUN_MARKER, write_run_marker
from trainer.decision import decision_scores, describe_cut, fit_decision

METHODS = ("auto", "uniform", "greedy")


@dataclass
class SoupConfig:
    members: list[Path]
    out: Path
    method: Literal["auto", "uniform", "greedy"] = (
        "auto"  # auto: whichever of the two scores higher on the selection rows
    )
    data: str | None = None  # default: the data the members were trained on (metrics.json "data")
    overwrite: bool = False
    batch_size: int = 64
    # `bertpack train --seeds N`: OUT holds the members (OUT/members/seedS) and gets the soup's files beside them
    beside_members: bool = False


@dataclass
class Member:
    """One ingredient: its weights folder, the run it belongs to, and that run's records."""

    path: Path
    run_dir: Path
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run_dir.name if self.path.name == "model" else f"{self.run_dir.name}/{self.path.name}"


def locate_member(path: Path) -> Member:
    """RUN (its model/), RUN/model, or RUN/checkpoints/checkpoint-N; the run must have its metrics.json."""
    path = Path(path)
    if not path.is_dir():
        raise BertpackError(
            f"soup member {path} is not a folder; pass run folders written by `bertpack train` "
            "(or their checkpoints/checkpoint-N kept with --keep-checkpoints)"
        )
    if (path / "model").is_dir():
        path = path / "model"
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if not (path / "config.json").is_file() or not has_safe_weights(path):
        raise BertpackError(f"soup member {path} holds no checkpoint (config.json and model.safetensors)")
    metrics, marker = _json(run_dir / "metrics.json"), _json(run_dir / RUN_MARKER)
    if not metrics or not isinstance(marker.get("config"), dict):
        raise BertpackError(
            f"soup member {path}: its run {run_dir} has no metrics.json or {RUN_MARKER} (the records of "
            "`bertpack train`), which say what it was trained and selected on"
        )
    return Member(path=path.resolve(), run_dir=run_dir.resolve(), metrics=metrics, config=marker["config"])


def _json(path: Path) -> dict:
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def check_members(members: list[Member]) -> None:
    """Refuse members that cannot be averaged or compared: fewer than two, one folder twice, other base models,
    shapes, data or held-out rows."""
    if len(members) < 2:
        raise BertpackError("a soup needs at least two members; pass two or more run folders")
    seen = [m.path for m in members]
    if len(set(seen)) != len(seen):
        raise BertpackError("a soup member is given twice; pass each run or checkpoint once")
    first = members[0]
    for m in members[1:]:
        for key, what in (("model", "pretrained model"), ("max_length", "--max-length"), ("limit", "--limit")):
            if m.config.get(key) != first.config.get(key):
                raise BertpackError(
                    f"soup members {first.name} and {m.name} differ in {what} ({first.config.get(key)} vs "
                    f"{m.config.get(key)}); average runs fine-tuned from one starting point on the same data"
                )
        if sorted(m.metrics.get("data_sha256", {}).values()) != sorted(first.metrics.get("data_sha256", {}).values()):
            raise BertpackError(
                f"soup members {first.name} and {m.name} were trained on different data files; "
                "average runs of the same data"
            )
        if _selection_key(m) != _selection_key(first):
            raise BertpackError(
                f"soup members {first.name} and {m.name} held out different selection rows (another "
                "--selection-split, --selection-seed or --select-on); the soup is chosen on rows no member "
                "trained on: average runs that share them"
            )


def _selection_key(member: Member) -> tuple:
    sel = member.metrics.get("selection") or {"on": "validation split"}
    return sel.get("on"), sel.get("fraction"), sel.get("seed"), tuple(sel.get("indices") or ())


def average_weights(paths: list[Path]) -> dict:
    """The uniform mean of the members' safetensors tensors (every tensor: encoder, pooler and head)."""
    from safetensors.torch import load_file

    total: dict = {}
    dtypes: dict = {}
    for path in paths:
        weights = load_file(str(path / "model.safetensors"))
        if total and (weights.keys() != total.keys() or any(weights[k].shape != total[k].shape for k in total)):
            raise BertpackError(
                f"{path} does not have the tensors of the other soup members (another architecture); "
                "average runs of one pretrained model"
            )
        for name, tensor in weights.items():
            dtypes.setdefault(name, tensor.dtype)
            total[name] = tensor.double() if name not in total else total[name] + tensor.double()
    return {name: (tensor / len(paths)).to(dtypes[name]) for name, tensor in total.items()}


@dataclass
class Scorer:
    """PyTorch logits of the selection and validation rows for a state dict, in the first member's architecture."""

    model: object
    tokenizer: object
    max_length: int
    batch_size: int

    def logits(self, state: dict, sentences: list[str]) -> np.ndarray:
        import torch

        self.model.load_state_dict(state)
        self.model.eval()
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        out = np.empty((len(sentences), self.model.config.num_labels), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [sentences[i] for i in rows],
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                out[rows] = self.model(**batch).logits.float().numpy()
        return out


def soup(cfg: SoupConfig, echo: Callable[[str], None] = print) -> dict:
    """Average, choose, fit, score and write the soup's run folder; returns its metrics (also OUT/metrics.json)."""
    if cfg.method not in METHODS:
        raise BertpackError(f"--method must be one of {', '.join(METHODS)}, not {cfg.method!r}")
    members = [locate_member(p) for p in cfg.members]
    check_members(members)
    out = Path(cfg.out)
    if not cfg.beside_members:
        _check_out(out, members, cfg.overwrite)
    with writing(out, "bertpack soup"):
        return _soup(cfg, members, out, echo)


def _check_out(out: Path, members: list[Member], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BertpackError(f"--out {out} is a file; pass a folder for the soup's run")
    resolved = out.resolve()
    for m in members:
        if resolved == m.run_dir or resolved in m.run_dir.parents:
            raise BertpackError(
                f"--out {out} holds the soup member {m.name}, which writing the soup there would delete; "
                "choose another --out"
            )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "a bertpack run" if (out / RUN_MARKER).is_file() else "other files"
        raise BertpackError(f"--out {out} already holds {what}; pass --overwrite to replace it or choose another --out")


def _soup(cfg: SoupConfig, members: list[Member], out: Path, echo: Callable[[str], None]) -> dict:
    from bertpack.models import load_classifier, load_tokenizer

    started = time.perf_counter()
    first = members[0]
    recorded = DataSpec.from_record(first.metrics.get("data_source")) or DataSpec.from_record(first.config)
    if cfg.data:  # the same columns, from where the data is now
        where = cfg.data if is_hub(cfg.data) else str(Path(cfg.data).resolve())
        data = DataSpec(where, recorded.text_column, recorded.label_column) if recorded else DataSpec(where)
    elif recorded:
        data = recorded
    else:
        raise BertpackError(
            f"{first.run_dir}/metrics.json names no data; pass --data with the data the members trained on"
        )
    if sorted(file_hashes(data).values()) != sorted(first.metrics.get("data_sha256", {}).values()):
        raise BertpackError(
            f"--data {data} is not the data the soup members were trained on (its files' sha256 differ); "
            "pass --data with that data"
        )
    import datasets

    datasets.disable_progress_bars()
    loaded = load_data(data, limit=first.config.get("limit"))
    dataset, labels = loaded.splits, loaded.labels
    sel_record = first.metrics.get("selection") or {"on": "validation split"}
    if sel_record.get("on") == "selection split":
        _, selection, indices = hold_out(dataset["train"], sel_record["fraction"], sel_record["seed"])
        if indices != sel_record.get("indices"):
            raise BertpackError(
                f"the selection rows drawn from {data} are not the ones the members recorded; "
                "pass --data with the data they trained on"
            )
    else:
        selection = dataset["validation"]
    dev = dataset["validation"]
    sel_sentences, sel_labels = list(selection["sentence"]), np.asarray(selection["label"])
    scorer = Scorer(
        model=load_classifier(first.path).eval(),
        tokenizer=load_tokenizer(first.path),
        max_length=int(first.config.get("max_length", 64)),
        batch_size=cfg.batch_size,
    )

    def selection_mcc(paths: list[Path]) -> float:
        return mcc(sel_labels, scorer.logits(average_weights(paths), sel_sentences).argmax(-1))

    echo(f"soup of {len(members)} members, chosen on the {sel_record['on']} ({len(sel_labels)} rows)")
    alone = {m.path: selection_mcc([m.path]) for m in members}
    for m in members:
        echo(f"  {m.name}: selection MCC {alone[m.path]:.4f}")
    uniform = [m.path for m in members]
    candidates = {"uniform": {"members": uniform, "selection_mcc": selection_mcc(uniform)}}
    greedy = _greedy(sorted(uniform, key=lambda p: -alone[p]), alone, selection_mcc)
    candidates["greedy"] = {"members": greedy, "selection_mcc": selection_mcc(greedy)}
    for name, c in candidates.items():
        echo(f"  {name} soup ({len(c['members'])} members): selection MCC {c['selection_mcc']:.4f}")
    method = (
        cfg.method if cfg.method != "auto" else max(("uniform", "greedy"), key=lambda k: candidates[k]["selection_mcc"])
    )
    chosen = candidates[method]["members"]
    state = average_weights(chosen)

    sel_logits = scorer.logits(state, sel_sentences)
    decision, cut = fit_decision(
        sel_logits, sel_labels, positive=1, threshold=sel_record.get("on") == "selection split"
    )
    fitted = decision_scores(sel_logits, sel_labels, decision)
    dev_logits, dev_labels, domains = (
        scorer.logits(state, list(dev["sentence"])),
        np.asarray(dev["label"]),
        list(dev["domain"]),
    )
    preds, _ = decide(dev_logits, decision)
    dev_scores = decision_scores(dev_logits, dev_labels, decision)
    best = {
        "checkpoint": f"{method} soup of {len(chosen)}",
        "selected_on": sel_record["on"],
        "selection_mcc": fitted["mcc_argmax"],
        **scores(dev_labels, preds, domains, labels.count),
        "argmax": scores(dev_labels, dev_logits.argmax(-1), domains, labels.count),
        "ece_before": dev_scores["ece_before"],
        "ece_after": dev_scores["ece_after"],
    }
    metrics = {
        "kind": "soup",
        "method": method,
        "method_asked": cfg.method,
        "model": first.metrics.get("model"),
        "data": str(data),
        "data_source": data.record(),
        "data_sha256": file_hashes(data),
        "labels": list(labels.names),
        "train_rows": first.metrics.get("train_rows"),
        "validation_rows": len(dev_labels),
        "selection": sel_record,
        "seed": None,
        "config": first.config,
        "members": [
            {
                "name": m.name,
                "path": str(m.path),
                "seed": m.config.get("seed"),
                "in_soup": m.path in chosen,
                "selection_mcc": alone[m.path],
                # a run's own held-out figures (at its own threshold); a checkpoint of a run has none
                "best": m.metrics.get("best") if m.path.name == "model" else None,
            }
            for m in members
        ],
        "candidates": {
            k: {"members": [str(p) for p in c["members"]], "selection_mcc": c["selection_mcc"]}
            for k, c in candidates.items()
        },
        "best": best,
        "decision": {
            **decision.record(),
            "positive_label": labels.names[decision.positive],
            "fitted_on": sel_record["on"],
            "threshold_fit": cut and cut.record(),
            "rows": len(sel_labels),
            **{f"fit_{k}": v for k, v in fitted.items()},
        },
        "epochs": [],
        "wall_time_s": time.perf_counter() - started,
        "versions": library_versions(),
    }
    scorer.model.load_state_dict(state)
    config = {**first.config, "out": str(out), "soup": [str(m.path) for m in members]}
    if cfg.beside_members:  # each file replaced whole, the members' folder kept
        config["seed"] = None
        with staging_dir(out / "model") as model_dir:
            scorer.model.save_pretrained(str(model_dir), safe_serialization=True)
            scorer.tokenizer.save_pretrained(str(model_dir))
        write_json_atomic(out / "metrics.json", metrics)
        write_run_marker(out, "complete", config)
    else:
        with staging_dir(out) as stage:
            scorer.model.save_pretrained(str(stage / "model"), safe_serialization=True)
            scorer.tokenizer.save_pretrained(str(stage / "model"))
            write_json_atomic(stage / "metrics.json", metrics)
            write_run_marker(stage, "complete", config)
    echo(summary(metrics))
    return metrics


def train_members(cfg, seeds: int, method: str = "auto", echo: Callable[[str], None] = print) -> dict:
    """`bertpack train --seeds N`: N runs of the recipe with seeds SEED, SEED+1, ... into OUT/members/seedS (a member
    already complete there is kept, so an interrupted --seeds run continues where it stopped), then their soup as OUT's
    model/, metrics.json and bertpack_run.json."""
    import dataclasses

    from trainer.train import summary as run_summary, train

    if seeds < 2:
        raise BertpackError(
            f"--seeds {seeds}: a weight average needs at least 2 runs; pass e.g. --seeds 3 (or leave it out for one "
            "run)"
        )
    if cfg.resume:
        raise BertpackError(
            "--seeds and --resume cannot be combined; run the same --seeds command again: members already complete are "
            "kept"
        )
    out = Path(cfg.out)
    if (
        out.is_dir()
        and any(p.name != "members" for p in out.iterdir())
        and not cfg.overwrite
        and not (out / "members").is_dir()
    ):
        raise BertpackError(
            f"--out {out} already holds other files; pass --overwrite to replace them or choose another --out"
        )
    members = []
    for seed in range(cfg.seed, cfg.seed + seeds):
        folder = out / "members" / f"seed{seed}"
        members.append(folder)
        if _json(folder / RUN_MARKER).get("status") == "complete" and not cfg.overwrite:
            echo(f"member seed {seed}: complete in {folder}, kept")
            continue
        echo(f"member seed {seed} ({len(members)} of {seeds}) -> {folder}")
        metrics = train(dataclasses.replace(cfg, seed=seed, out=folder, overwrite=cfg.overwrite or folder.exists()))
        echo(run_summary(metrics))
    return soup(SoupConfig(members=members, out=out, method=method, data=cfg.data, beside_members=True), echo)


def _greedy(ranked: list[Path], alone: dict, score: Callable[[list[Path]], float]) -> list[Path]:
    """Greedy soup: start from the best member, add each next one if the soup's selection MCC does not drop."""
    chosen, best = [ranked[0]], alone[ranked[0]]
    for path in ranked[1:]:
        trial = score(chosen + [path])
        if trial >= best:
            chosen, best = chosen + [path], trial
    return chosen


def summary(metrics: dict) -> str:
    best, decision = metrics["best"], metrics["decision"]
    cut = describe_cut(decision)
    held = "held out: scored once" if best["selected_on"] == "selection split" else "also the selection set"
    lines = [f"\n{best['checkpoint']} (chosen on the {best['selected_on']}: MCC {best['selection_mcc']:.3f})"]
    for m in metrics["members"]:
        own = f", validation MCC {m['best']['mcc']:.3f} alone" if m.get("best") else ""
        lines.append(f"  {'+' if m['in_soup'] else '-'} {m['name']}: selection MCC {m['selection_mcc']:.3f}{own}")
    lines += [
        f"validation split ({held}): MCC {best['mcc']:.3f} at {cut} (argmax {best['argmax']['mcc']:.3f}; in-domain "
        f"{best.get('mcc_in_domain', float('nan')):.3f}, out-of-domain "
        f"{best.get('mcc_out_domain', float('nan')):.3f}), "
        f"accuracy {best['accuracy']:.3f}",
        f"calibration: temperature {decision['temperature']:.3f}; ECE on the validation split "
        f"{best['ece_before']:.3f} -> {best['ece_after']:.3f}",
    ]
    return "\n".join(lines)
