"""Experiment behind recipe X of the recipes tried (docs/train.md; not a product option): `bertpack train` with a masked
mean-pooling head in place of BERT's [CLS] pooler, to test whether the embedded sentence-embedding
model (trained with mean pooling) does better on CoLA when the classifier reads what it was trained to
produce. It swaps the model class the trainer loads; everything else is `bertpack train`. The result
(dev MCC 0.283 vs 0.290 for the same recipe with the [CLS] head) did not justify a custom
architecture, which would also change the exported graph and every loader.

    python scripts/experiments/meanpool_head.py train --data ../shared/data/cola --out runs/recipes/X_meanpool_C_eval2 \
        --lr 1e-4 --epochs 6 --layer-decay 0.85 --head-lr-multiplier 5 --evals-per-epoch 2 --class-weights none
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from torch import nn
import transformers
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPoolBert(BertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kw):
        h = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        logits = self.classifier(self.dropout(pooled))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class Auto:
    @staticmethod
    def from_pretrained(model_id, **kw):
        kw.pop("trust_remote_code", None)
        return MeanPoolBert.from_pretrained(model_id, **kw)


transformers.AutoModelForSequenceClassification = Auto
from bertpack.cli import main  # noqa: E402 - after the model class is swapped

sys.argv = ["bertpack"] + sys.argv[1:]
main()
