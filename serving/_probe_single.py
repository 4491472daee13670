# EXPERIMENT (not committed): single-pass batchable /classify, to measure what the second pass costs.
import os
import bentoml
import numpy as np
from serving.engine import OnnxClassifier, softmax
from serving.schema import Sentences
from serving.source import ServeConfig, resolve_model


@bentoml.service(name="probe", traffic={"timeout": 30, "max_concurrency": 512}, threads=1,
                 logging={"access": {"enabled": os.environ.get("BERTPACK_ACCESS_LOG", "1") == "1"}})
class Single:
    def __init__(self) -> None:
        cfg = ServeConfig.from_env()
        src = resolve_model(cfg.model)
        self.engine = OnnxClassifier(src.path, device="cpu", threads=cfg.threads, verify=False, buckets=None, spin=False)
        self.engine.run(self.engine.pad([[101, 102]], length=16))

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)
    def classify(self, sentences: Sentences) -> list[dict]:
        ids = [e.ids[:64] for e in self.engine.tokenizer.encode_batch(sentences)]
        p = softmax(self.engine.logits_from_ids(ids, batch_size=32))
        labels = self.engine.labels
        return [{"label": labels[int(np.argmax(r))], "probabilities": dict(zip(labels, map(float, r)))} for r in p]
