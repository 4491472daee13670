"""Measurement probe, not the product: a BentoML service whose /classify is itself the batchable API.

It answers the question "what does the service's second in-process pass cost?" (README, serve, load
test). The real service (serving/service.py) validates each request fully (including the token limit
and the `truncate` option, which need the tokenizer) before the request joins a batch, then calls its
batchable `infer` through BentoML's in-process proxy: two HTTP passes per request. This probe has one
pass: sentences are checked only by the typed signature, cut to the model's limit without asking,
and the response is a bare list. Run it under load with:

    python scripts/loadtest.py --model artifacts/cola --target scripts.single_pass_probe:SinglePass
"""

from __future__ import annotations

import os

import bentoml
import numpy as np

from serving.engine import OnnxClassifier, keep_within, softmax
from serving.schema import Sentences
from serving.source import ServeConfig, resolve_model


@bentoml.service(name="bertpack-single-pass-probe", traffic={"timeout": 30, "max_concurrency": 512}, threads=1,
                 logging={"access": {"enabled": os.environ.get("BERTPACK_ACCESS_LOG", "1") == "1"}})
class SinglePass:
    def __init__(self) -> None:
        config = ServeConfig.from_env()
        source = resolve_model(config.model)
        self.engine = OnnxClassifier(source.path, device="cpu", threads=config.threads, buckets=None, spin=False)
        self.engine_batch = config.engine_batch
        self.engine.run(self.engine.pad([[101, 102]], length=16))

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)
    def classify(self, sentences: Sentences) -> list[dict]:
        limit = self.engine.max_length
        ids = [keep_within(e.ids, limit) for e in self.engine.tokenizer.encode_batch(sentences)]
        probabilities = softmax(self.engine.logits_from_ids(ids, batch_size=self.engine_batch))
        labels = self.engine.labels
        return [{"label": labels[int(np.argmax(p))], "probabilities": dict(zip(labels, map(float, p)))} for p in probabilities]
