"""Load-test peer, not the product: the service a BentoML example would write for the same model, the transformers
pipeline in PyTorch fp32 with adaptive batching. PEER_MODEL names the checkpoint (a run's model/ folder)."""

from __future__ import annotations

import os

import bentoml


@bentoml.service(name="pipeline", traffic={"timeout": 30, "max_concurrency": 512})
class Pipeline:
    def __init__(self) -> None:
        from transformers import pipeline

        self.pipe = pipeline("text-classification", model=os.environ["PEER_MODEL"], device="cpu", top_k=None)

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)
    def classify(self, sentences: list[str]) -> list[list[dict]]:
        return self.pipe(sentences, batch_size=32, truncation=True, max_length=64)
