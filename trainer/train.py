"""Fine-tune BERT on CoLA (or a data set of one's own), top to bottom: check inputs, load data and model, train with
the HF Trainer, keep the best checkpoint by MCC on rows held out of train, fit its decision there, score the validation
split once, write the run folder atomically.

Run folder (the contract `bertpack export` reads):
    OUT/bertpack_run.json      marker + status ("training" / "complete" / "failed" with a "reason") + the recipe
    OUT/model/                 best checkpoint: model.safetensors, config.json (id2label), tokenizer files
    OUT/metrics.json           per-epoch loss/accuracy/MCC, labels, timing, versions, seed, data hashes
    OUT/training_curves.png    loss and MCC per epoch
    OUT/checkpoints/           Trainer checkpoints for --resume (removed after success unless --keep-checkpoints, which
                               keeps the checkpoint of every validation point)

The folder's life cycle (refusals, --resume, --overwrite, what a failure leaves) is trainer/run_dir.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from bertpack.data import DataSpec, Loaded, hold_out, is_hub, load_data
from bertpack.errors import BertpackError
from bertpack.files import sha256_file, staging_dir, umask_mode, write_bytes_atomic, write_json_atomic
from bertpack.locks import writing
from bertpack.machine import cpu_model, library_versions
from bertpack.labels import COLA_NAMES, Labels, listed
from bertpack.metrics import scores
from bertpack.models import resolve_model
from bertpack.postprocess import Decision, decide
from bertpack.run_marker import write_run_marker
from trainer.config import TrainConfig
from trainer.decision import decision_scores, describe_cut, fit_decision
from trainer.run_dir import check_out_dir, checkpoints, is_main_process, one_line, run_folder


# --------------------------------------------------------------------------- optimizer
def build_optimizer(model, cfg: TrainConfig):
    """AdamW with layer-wise lr decay and a faster head; no decay on biases and LayerNorm weights."""
    import torch

    n_layers = model.config.num_hidden_layers
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("classifier") or ".pooler." in name:
            lr = cfg.learning_rate * cfg.head_lr_multiplier
        elif ".encoder.layer." in name:
            layer = int(name.split(".encoder.layer.")[1].split(".")[0])
            lr = cfg.learning_rate * cfg.layer_decay ** (n_layers - layer)
        else:  # embeddings sit below layer 0
            lr = cfg.learning_rate * cfg.layer_decay ** (n_layers + 1)
        wd = 0.0 if (name.endswith("bias") or "LayerNorm" in name) else cfg.weight_decay
        groups.setdefault((lr, wd), []).append(param)
    return torch.optim.AdamW(
        [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()], lr=cfg.learning_rate
    )


# --------------------------------------------------------------------------- loss
def balanced_class_weights(labels: list[int], num_labels: int = 2, names: tuple[str, ...] = ()) -> list[float]:
    """sklearn's "balanced" weights, n_samples / (n_classes * count(class)); every class must occur."""
    from sklearn.utils.class_weight import compute_class_weight

    missing = sorted(set(range(num_labels)) - set(labels))
    if missing:
        which = f"{names[missing[0]]!r} (id {missing[0]})" if names else str(missing[0])
        raise BertpackError(
            f"--class-weights balanced needs every label in the training rows, and label {which} has "
            "none; raise --limit or pass --class-weights none"
        )
    return [float(w) for w in compute_class_weight("balanced", classes=np.arange(num_labels), y=np.asarray(labels))]


def weighted_loss(weights: list[float]):
    """A Trainer `compute_loss_func`: cross-entropy with per-class weights."""
    import torch

    weight = torch.tensor(weights)

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        # The weights shape the training gradient only: validation (run without gradients) reports the plain
        # cross-entropy, comparable between runs with and without class weights.
        w = weight.to(logits.device) if torch.is_grad_enabled() else None
        return torch.nn.functional.cross_entropy(logits.float(), labels, weight=w)

    return loss


# --------------------------------------------------------------------------- the run
# torch.load falls back to full unpickling under this variable wherever its caller did not pass weights_only: the
# Trainer's --resume reads a checkpoint's rng_state.pth that way, so a run folder from elsewhere would run its code.
UNSAFE_TORCH_LOAD = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def train(cfg: TrainConfig) -> dict:
    """Train, write the run folder, return the metrics dict (also in OUT/metrics.json)."""
    cfg.validate()
    if os.environ.pop(UNSAFE_TORCH_LOAD, None) is not None and is_main_process():
        print(
            f"note: {UNSAFE_TORCH_LOAD} is ignored: bertpack loads checkpoint state with torch.load(weights_only=True) "
            "only",
            file=sys.stderr,
        )
    # The main process holds OUT's lock from the checks to the end: a second run, or a --resume, on the same --out
    # while this one trains is refused instead of writing checkpoints into the same folder.
    with writing(cfg.out, "bertpack train") if is_main_process() else contextlib.nullcontext():
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict:
    check_out_dir(cfg)
    model_id = resolve_model(cfg.model)
    loaded = load_data(DataSpec(cfg.data, cfg.text_column, cfg.label_column), limit=cfg.limit)
    dataset, labels = loaded.splits, loaded.labels
    if len(dataset["train"]) == 0:
        raise BertpackError("the training split is empty; check --data and --limit")
    selection_rows: list[int] | None = None
    if cfg.select_on == "split":  # the validation split is then scored once, on the chosen checkpoint
        train_split, selection, selection_rows = hold_out(dataset["train"], cfg.selection_split, cfg.selection_seed)
        dataset["train"], dataset["selection"] = train_split, selection
    class_weights = (
        balanced_class_weights(dataset["train"]["label"], labels.count, labels.names)
        if cfg.class_weights == "balanced"
        else None
    )
    if loaded.summary and is_main_process():
        print(loaded.summary, flush=True)

    import torch
    import transformers
    from transformers import DataCollatorWithPadding, TrainingArguments

    from trainer.batching import LengthGroupedTrainer
    from transformers.trainer_callback import ProgressCallback

    from trainer.callbacks import EvalLines, EvalSchedule, StepTimer

    transformers.logging.set_verbosity_error()  # the expected "newly initialized classifier" warning is noise here
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world_size > 1
    is_main = is_main_process()

    # Everything that can fail on a bad input happens before the run folder exists (run_folder below).
    # Seed before the model exists: its classifier head (and a re-initialised pooler) is drawn at load time,
    # before the Trainer seeds anything, so without this the same --seed gives a different head every run.
    transformers.set_seed(cfg.seed)
    tokenizer, model = load_model(model_id, cfg, labels)

    if cfg.reinit_pooler and getattr(getattr(model, "bert", None), "pooler", None) is not None:
        model.bert.pooler.apply(model._init_weights)
    reinit_top_layers(model, cfg.reinit_top_layers)

    def tokenize(batch):
        return tokenizer(batch["sentence"], truncation=True, max_length=cfg.max_length)

    encoded = dataset.map(tokenize, batched=True, desc="tokenizing")
    val = encoded["validation"]
    # One eval set per CoLA domain besides the whole one (other data has none): the Trainer reorders eval batches by
    # length (group_by_length), so predictions cannot be matched back to rows for a domain split.
    dev_sets = {"all": val}
    if labels.cola:
        dev_sets.update(
            {
                "in": val.filter(lambda d: d == "in", input_columns="domain"),
                "out": val.filter(lambda d: d == "out", input_columns="domain"),
            }
        )
    dev_sets = {k: v for k, v in dev_sets.items() if len(v)}
    # What the Trainer validates during training, and so chooses the checkpoint on.
    eval_sets = {"selection": encoded["selection"]} if cfg.select_on == "split" else dev_sets
    chosen_on = "selection" if cfg.select_on == "split" else "all"

    def compute_metrics(pred) -> dict[str, float]:  # accuracy, MCC, and macro-F1 for more than two classes
        return scores(pred.label_ids, pred.predictions.argmax(-1), num_labels=labels.count)

    on_gpu = torch.cuda.is_available()
    use_bf16 = on_gpu and torch.cuda.is_bf16_supported(
        including_emulation=False
    )  # emulated bf16 (T4, V100) is slow: fp16
    never = 2**31 - 1  # validation, checkpoints and logs are scheduled by EvalSchedule, not by a fixed interval
    args = TrainingArguments(
        output_dir=str(cfg.out / "checkpoints"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear",
        seed=cfg.seed,
        data_seed=cfg.seed,
        eval_strategy="steps",
        save_strategy="steps",
        eval_steps=never,
        save_steps=never,
        logging_strategy="steps",
        logging_steps=never,
        # The best and the latest (for --resume); --keep-checkpoints keeps every validation point's, e.g. to average
        # the last ones with `bertpack soup RUN/checkpoints/checkpoint-N ...`.
        save_total_limit=None if cfg.keep_checkpoints else 2,
        load_best_model_at_end=True,
        metric_for_best_model=f"{chosen_on}_mcc",
        greater_is_better=True,
        save_safetensors=True,
        group_by_length=cfg.group_by_length,  # with LengthGroupedTrainer's seeded sampler
        # The loss is a per-process mean (weighted_loss); the Trainer would otherwise multiply a custom loss by the
        # process count, for token-count normalisation that a classifier's loss does not use.
        average_tokens_across_devices=False,
        bf16=use_bf16,
        fp16=on_gpu and not use_bf16,
        ddp_backend=("nccl" if on_gpu else "gloo") if distributed else None,
        ddp_find_unused_parameters=False if distributed else None,
        dataloader_num_workers=0,
        report_to=[],
        disable_tqdm=False,
        use_cpu=not on_gpu,
    )
    collator = DataCollatorWithPadding(
        tokenizer,
        padding="max_length" if cfg.padding == "max" else "longest",
        max_length=cfg.max_length if cfg.padding == "max" else None,
    )
    with run_folder(cfg, is_main):
        trainer = LengthGroupedTrainer(
            model=model,
            args=args,
            train_dataset=encoded["train"],
            eval_dataset=eval_sets,
            processing_class=tokenizer,
            data_collator=collator,
            compute_metrics=compute_metrics,
            optimizers=(build_optimizer(model, cfg), None),
            callbacks=[EvalSchedule(cfg.evals_per_epoch), timer := StepTimer()],
            compute_loss_func=weighted_loss(class_weights) if class_weights else None,
        )
        trainer.remove_callback(ProgressCallback)  # its raw log dicts, replaced by one line per validation point
        trainer.add_callback(EvalLines(list(eval_sets)))

        # The checkpoint check_out_dir checked (the Trainer's own choice too: the highest step), named in metrics.json
        resumed_from = checkpoints(cfg.out)[-1] if cfg.resume else None
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=str(resumed_from) if resumed_from else None)
        wall = time.perf_counter() - started
        epochs = _per_epoch(trainer.state.log_history, chosen_on)
        # The best checkpoint is loaded back at the end: its decision is fitted on the rows it was chosen on, then the
        # validation split (and a data set's test file) is scored once with it.
        chosen_logits, chosen_labels = _predict(trainer, eval_sets[chosen_on])
        # Chosen on the validation split (--select-on dev), the labels stay the argmax: a threshold fitted there would
        # flatter the figure reported on the same rows.
        decision, cut = fit_decision(chosen_logits, chosen_labels, positive=1, threshold=cfg.select_on == "split")
        chosen = decision_scores(chosen_logits, chosen_labels, decision)
        held_out = _score_held_out(trainer, dev_sets, decision, labels.count)
        test = None
        if "test" in encoded:
            test = {
                "rows": len(encoded["test"]),
                **_score_held_out(trainer, {"all": encoded["test"]}, decision, labels.count),
            }

        metrics = {
            "model": model_id,
            "data": str(cfg.data),
            # What export, verify --parity and bench read again for a model whose labels are not CoLA's
            "data_source": _recorded_data(cfg, loaded),
            "data_sha256": {str(p): sha256_file(p) for p in loaded.files},
            "labels": list(labels.names),  # id -> name, as model/config.json's id2label
            "train_rows": len(encoded["train"]),
            "validation_rows": len(val),
            "selection": {
                "on": "selection split" if cfg.select_on == "split" else "validation split",
                **(
                    {
                        "fraction": cfg.selection_split,
                        "seed": cfg.selection_seed,
                        "rows": len(selection_rows),
                        "label_counts": _label_counts(encoded["selection"]["label"]),
                        # positions in the training file (after --limit) of the rows held out
                        "indices": selection_rows,
                    }
                    if selection_rows is not None
                    else {"rows": len(val)}
                ),
            },
            "seed": cfg.seed,
            "config": cfg.to_dict(),
            "device": torch.cuda.get_device_name(0) if on_gpu else f"{cpu_model()} ({os.cpu_count()} cores)",
            "precision": "bf16" if use_bf16 else ("fp16" if on_gpu else "fp32"),
            "class_weights": class_weights,
            "world_size": args.world_size,
            "gpus_per_process": args.n_gpu,
            # The chosen checkpoint on the validation split, at its decision (threshold); "argmax": the most probable
            # label.
            "best": {
                "checkpoint": trainer.state.best_model_checkpoint and Path(trainer.state.best_model_checkpoint).name,
                "selected_on": "selection split" if cfg.select_on == "split" else "validation split",
                "selection_mcc": chosen["mcc_argmax"],
                **held_out,
            },
            "decision": {
                **decision.record(),
                "positive_label": labels.names[decision.positive],
                "fitted_on": "selection split" if cfg.select_on == "split" else "validation split",
                "rows": len(chosen_labels),
                "threshold_fit": cut and cut.record(),
                **{f"fit_{k}": v for k, v in chosen.items()},
            },
            "test": test,
            "epochs": epochs,
            "train_runtime_s": result.metrics.get("train_runtime"),
            # The Trainer's own figure includes evaluation and checkpoint saving; this one times the optimizer steps
            # only.
            # Approximate: the last batch of an epoch may be short.
            "train_samples_per_second": timer.steps * args.world_size * args.train_batch_size / timer.seconds
            if timer.seconds
            else None,
            # after --resume the Trainer divides the whole run's samples by the resumed part's time: no figure then
            "trainer_samples_per_second_incl_eval": None
            if resumed_from
            else result.metrics.get("train_samples_per_second"),
            "wall_time_s": wall,
            # wall_time_s, train_runtime_s and the samples/s figures time this process only: after --resume, the steps
            # since
            # this checkpoint (the interrupted part's time is not known once it was killed)
            "resumed_from": resumed_from and resumed_from.name,
            "versions": library_versions(),
        }

        if trainer.is_world_process_zero():
            with staging_dir(cfg.out / "model") as tmp:
                trainer.save_model(str(tmp))
                tokenizer.save_pretrained(str(tmp))
                (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the recipe is in metrics.json
                for file in tmp.iterdir():  # safetensors writes 0600; the weights should be as readable as the rest
                    os.chmod(file, umask_mode(0o666))
            write_json_atomic(cfg.out / "metrics.json", metrics)
            plot_curves(metrics["epochs"], cfg.out / "training_curves.png")
            if not cfg.keep_checkpoints:
                shutil.rmtree(cfg.out / "checkpoints", ignore_errors=True)
            write_run_marker(cfg.out, "complete", cfg.to_dict())
    return metrics


def _recorded_data(cfg: TrainConfig, loaded: Loaded) -> dict:
    """The data as export, verify --parity and bench find it again: a local path made absolute, the columns read."""
    data = cfg.data if is_hub(cfg.data) else str(Path(cfg.data).resolve())
    return DataSpec(data, loaded.text_column, loaded.label_column).record()


def load_model(model_id: str, cfg: TrainConfig, labels: Labels):
    """The tokenizer and the classification model with a head for `labels`, or a one-line error naming --model (a
    truncated or damaged checkpoint fails here, before the run folder is made)."""
    from bertpack.models import load_classifier, load_tokenizer

    try:
        tokenizer = load_tokenizer(model_id, use_fast=True)
    except Exception as exc:  # noqa: BLE001 - missing files, a damaged tokenizer.json, the hub: all "cannot load"
        raise BertpackError(
            f"--model {cfg.model}: cannot load its tokenizer ({one_line(exc)}); the checkpoint needs its tokenizer "
            "files "
            "(tokenizer.json or vocab.txt) beside config.json"
        ) from None
    extra = {"classifier_dropout": cfg.classifier_dropout} if cfg.classifier_dropout is not None else {}
    head = _head_labels(model_id)
    if head not in (None, labels.count):  # e.g. an MNLI model: its 3-label head cannot hold CoLA's 2 labels
        if is_main_process():
            what = "CoLA" if labels.cola else "the data's labels"
            print(
                f"note: --model {cfg.model} is a sequence classifier with {head} labels; its head is replaced by a "
                f"new {labels.count}-label head for {what} (the encoder's weights are kept)",
                file=sys.stderr,
            )
        extra["ignore_mismatched_sizes"] = True
    try:
        model = load_classifier(
            model_id, num_labels=labels.count, id2label=labels.id2label(), label2id=labels.label2id(), **extra
        )
    except Exception as exc:  # noqa: BLE001 - a truncated safetensors file, shapes that do not match config.json, ...
        raise BertpackError(
            f"--model {cfg.model}: cannot load its weights ({one_line(exc)}); the checkpoint looks damaged or "
            "incomplete: "
            "copy or download it again, or pass another --model"
        ) from None
    return tokenizer, model


def _head_labels(model_id: str) -> int | None:
    """The label count of the checkpoint's classification head, or None when it has none (a bare encoder)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        model_id, trust_remote_code=False
    )  # resolve_model has fetched and checked it: cached
    has_head = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    return config.num_labels if has_head else None


def _per_epoch(log_history: list[dict], on: str = "all") -> list[dict]:
    """Fold the Trainer's log lines into one row per evaluation point (`on`: the eval set that chooses)."""
    rows: dict[float, dict] = {}
    for entry in log_history:
        epoch = round(float(entry.get("epoch", 0.0)), 4)
        row = rows.setdefault(epoch, {"epoch": epoch})
        if "loss" in entry:
            row["train_loss"] = entry["loss"]
        for key, name in (
            (f"eval_{on}_loss", "eval_loss"),
            (f"eval_{on}_accuracy", "accuracy"),
            (f"eval_{on}_mcc", "mcc"),
            (f"eval_{on}_macro_f1", "macro_f1"),
            ("eval_in_mcc", "mcc_in_domain"),
            ("eval_out_mcc", "mcc_out_domain"),
        ):
            if key in entry:
                row[name] = entry[key]
    return [r for r in rows.values() if "mcc" in r]


def _predict(trainer, dataset) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of a dataset, row for row (the Trainer may reorder rows, and keeps the pairs together)."""
    out = trainer.predict(dataset)
    return np.asarray(out.predictions, dtype=np.float32), np.asarray(out.label_ids)


def _score_held_out(trainer, sets: dict, decision: Decision, num_labels: int) -> dict:
    """Scores of rows the choice never saw, at the decision ("argmax": at the most probable label), with CoLA's
    domains where `sets` has them (in, out), and ECE before and after the temperature."""
    parts = {name: _predict(trainer, sets[name]) for name in ("in", "out") if name in sets} or {
        "all": _predict(trainer, sets["all"])
    }
    logits = np.concatenate([lg for lg, _ in parts.values()])
    truth = np.concatenate([lb for _, lb in parts.values()])
    domains = np.concatenate([[name] * len(lb) for name, (_, lb) in parts.items()])
    preds, _ = decide(logits, decision)
    fit = decision_scores(logits, truth, decision)
    return {
        "mcc_in_domain": None,
        "mcc_out_domain": None,  # CoLA's: None for data without domains
        **scores(truth, preds, domains, num_labels),
        "argmax": scores(truth, logits.argmax(-1), domains, num_labels),
        "ece_before": fit["ece_before"],
        "ece_after": fit["ece_after"],
    }


def _label_counts(labels: list[int]) -> dict[str, int]:
    return {str(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True))}


def reinit_top_layers(model, count: int) -> None:
    """Draw the top `count` encoder layers afresh (the model's own initialiser): their pretrained weights serve the
    pretraining objective, and a fine-tuned head may do better on layers learnt for the task."""
    if count <= 0:
        return
    layers = model.bert.encoder.layer
    if count > len(layers):
        raise BertpackError(
            f"--reinit-top-layers {count} is more than the model's {len(layers)} encoder layers; "
            f"pass at most {len(layers)}"
        )
    for layer in layers[len(layers) - count :]:
        layer.apply(model._init_weights)


def plot_curves(epochs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["epoch"] for r in epochs]
    fig, (ax_loss, ax_mcc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(x, [r.get("train_loss") for r in epochs], marker="o", label="train")
    ax_loss.plot(x, [r.get("eval_loss") for r in epochs], marker="o", label="validation")
    ax_loss.set(title="loss", xlabel="epoch")
    ax_loss.legend()
    for key, label in (
        ("mcc", "all"),
        ("mcc_in_domain", "in-domain"),
        ("mcc_out_domain", "out-of-domain"),
        ("macro_f1", "macro-F1"),
    ):
        if any(r.get(key) is not None for r in epochs):
            ax_mcc.plot(x, [r.get(key) for r in epochs], marker="o", label=label)
    ax_mcc.set(title="validation MCC", xlabel="epoch")
    ax_mcc.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, png.getvalue())


def summary(metrics: dict) -> str:
    """The one-screen report printed at the end of `bertpack train`."""
    best = metrics["best"]
    lines = [
        f"model          {metrics['model']}",
        f"data           {metrics['data']} ({metrics['train_rows']} train / {metrics['validation_rows']} validation "
        f"rows{_labels(metrics.get('labels'))})",
        f"device         {metrics['device']} x{metrics['world_size']} ({metrics['precision']})",
        f"time           {metrics['wall_time_s']:.0f} s{_since(metrics.get('resumed_from'))}, "
        f"{_rate(metrics['train_samples_per_second'])}",
        "",
    ]
    # CoLA's per-domain columns, macro-F1 for more than two classes: the columns a run has figures for
    domains = any(r.get("mcc_in_domain") is not None for r in [best, *metrics["epochs"]])
    f1 = best.get("macro_f1") is not None
    on = best.get("selected_on", "validation split")
    lines.append(
        f"validation points on the {on}"
        + (f" ({metrics['selection']['rows']} training rows held out)" if on == "selection split" else "")
    )
    lines.append(
        " epoch  train loss  val loss  accuracy     MCC"
        + ("  macro-F1" if f1 else "")
        + ("  in-domain  out-of-domain" if domains else "")
    )
    for r in metrics["epochs"]:
        lines.append(
            f"{r['epoch']:6.2f}  {_f(r.get('train_loss'))}  {_f(r.get('eval_loss'), 8)}  "
            f"{_f(r.get('accuracy'), 8)}  {_f(r.get('mcc'), 6)}"
            + (f"  {_f(r.get('macro_f1'), 8)}" if f1 else "")
            + (f"  {_f(r.get('mcc_in_domain'), 9)}  {_f(r.get('mcc_out_domain'), 13)}" if domains else "")
        )
    per_domain = (
        f"in-domain {_f(best['mcc_in_domain'], 0)}, out-of-domain {_f(best['mcc_out_domain'], 0)}" if domains else ""
    )
    f1_best = f", macro-F1 {best['macro_f1']:.3f}" if f1 else ""
    lines.append("")
    if decision := metrics.get("decision"):
        held = "held out: scored once, after the choice" if on == "selection split" else "also the selection set"
        cut = describe_cut(decision)
        lines += [
            f"best ({best['checkpoint']}, chosen on the {on}: MCC {best['selection_mcc']:.3f})",
            f"validation split ({held}): MCC {best['mcc']:.3f} at {cut} (argmax {best['argmax']['mcc']:.3f}"
            f"{'; ' + per_domain if per_domain else ''}), accuracy {best['accuracy']:.3f}{f1_best}",
            f"calibration    temperature {decision['temperature']:.3f} (fitted on the {decision['fitted_on']}); "
            f"ECE on the validation split {best['ece_before']:.3f} -> {best['ece_after']:.3f}",
        ]
    else:  # a run recorded before decisions were
        lines.append(
            f"best ({best['checkpoint']}): MCC {best['mcc']:.3f}{f' ({per_domain})' if per_domain else ''}, "
            f"accuracy {best['accuracy']:.3f}{f1_best}"
        )
    if test := metrics.get("test"):
        f1_test = f", macro-F1 {test['macro_f1']:.3f}" if test.get("macro_f1") is not None else ""
        lines.append(
            f"test ({test['rows']} rows, the chosen checkpoint): MCC {test['mcc']:.3f}, accuracy "
            f"{test['accuracy']:.3f}{f1_test}"
        )
    return "\n".join(lines)


def _labels(names: list[str] | None) -> str:
    """The label names of a run that is not CoLA's (older runs and CoLA: nothing)."""
    return "" if not names or tuple(names) == COLA_NAMES else f"; {len(names)} labels: {listed(names)}"


def _rate(samples_per_second: float | None) -> str:
    # None when the run took no optimizer step (a --resume of a run that failed after its last step)
    return "no training steps" if samples_per_second is None else f"{samples_per_second:.1f} training samples/s"


def _since(checkpoint: str | None) -> str:
    return f" (since --resume from {checkpoint})" if checkpoint else ""


def _f(value: float | None, width: int = 10) -> str:
    return f"{value:{width}.3f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"
