"""Measurement probe, not the product: the BentoML ceiling on this host, with no model at all.

A batchable /classify with the product's typed signature that answers every sentence with a constant.
Whatever it reaches under the load test is the most any BentoML service can serve on this machine
with that load generator beside it; the load test's 70% bar (of the raw int8 engine) is compared
with it in the README:

    BERTPACK_ACCESS_LOG=0 python scripts/loadtest.py --model artifacts/cola \\
        --target scripts.experiments.noop_ceiling:NoopCeiling --duration 30
"""

from __future__ import annotations

import os

import bentoml

from serving.schema import Sentences

ANSWER = {"label": "acceptable", "probabilities": {"unacceptable": 0.0, "acceptable": 1.0}}


@bentoml.service(name="bertpack-noop-ceiling", traffic={"timeout": 30, "max_concurrency": 512}, threads=1,
                 logging={"access": {"enabled": os.environ.get("BERTPACK_ACCESS_LOG", "1") == "1"}})
class NoopCeiling:
    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)
    def classify(self, sentences: Sentences) -> list[dict]:
        return [ANSWER for _ in sentences]
