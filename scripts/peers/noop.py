"""Load-test peer, not the product: a batchable BentoML service with no model, whose rate is BentoML's own ceiling
on a host (requests/s for one sentence per request): `scripts/loadtest.py` starts it."""

from __future__ import annotations

import bentoml

ANSWER = {"label": "acceptable", "probabilities": {"unacceptable": 0.0, "acceptable": 1.0}}


@bentoml.service(name="noop", traffic={"timeout": 30, "max_concurrency": 512})
class Noop:
    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)
    def classify(self, sentences: list[str]) -> list[dict]:
        return [ANSWER for _ in sentences]
