"""Write a random-weight BERT classifier with the shape and tokenizer of a model folder.

Speed does not depend on the weights, so on a machine that cannot reach the hub (the GPU machine)
this stands in for a checkpoint of the same shape when only throughput is measured:

    python scripts/random_model.py SHAPE_DIR OUT_DIR     # SHAPE_DIR: config.json + tokenizer files

SHAPE_DIR needs config.json and the tokenizer files, not the weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape_dir", type=Path, help="folder with config.json and tokenizer files")
    parser.add_argument("out", type=Path, help="folder to write (safetensors + config + tokenizer)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(args.seed)
    config = AutoConfig.from_pretrained(str(args.shape_dir))
    model = BertForSequenceClassification(config)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(args.shape_dir)).save_pretrained(args.out)
    print(f"random {config.num_hidden_layers}-layer, hidden {config.hidden_size} BERT written to {args.out}")


if __name__ == "__main__":
    main()
