"""The BentoML service end to end: a real `bentoml serve` process on 127.0.0.1 serving an artifact
that `bertpack export` made from the tiny random BERT, called with BentoML's client and plain HTTP.
One server for the whole module (start-up costs ~15 s on 2 cores)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import local_server

try:  # tests/ may or may not be a package
    from conftest import REPO, run_cli
except ImportError:
    from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow
BENTOML = str(Path(sys.executable).parent / "bentoml")


def start_server(
    home: Path, log_path: Path, env: dict | None = None, target: str = "serving.service:Bertpack", timeout: float = 180
) -> tuple[subprocess.Popen, str]:
    """A real server with a private model store (conftest has cleared the shell's BERTPACK_* settings)."""
    full_env = {**os.environ, "BENTOML_HOME": str(home), **(env or {})}
    try:
        return local_server.start_server(full_env, log_path, target=target, timeout=timeout)
    except RuntimeError as exc:
        raise AssertionError(str(exc)) from None


stop_server = local_server.stop_server


@pytest.fixture(scope="module")
def exported(tiny_run, synthetic_cola, tmp_path_factory):
    """The tiny run exported by the real `bertpack export` into a private BentoML store."""
    root = tmp_path_factory.mktemp("serving")
    home = root / "bentoml"
    proc = run_cli(
        "export",
        str(tiny_run),
        "--out",
        str(root / "artifact"),
        "--data",
        str(synthetic_cola),
        env={"BENTOML_HOME": str(home)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((root / "artifact" / "manifest.json").read_text())
    return {"root": root, "home": home, "artifact": root / "artifact", "manifest": manifest}


@pytest.fixture(scope="module")
def server(exported):
    log_path = exported["root"] / "serve.log"
    proc, url = start_server(exported["home"], log_path)  # default model: bertpack-cola:latest from the store
    yield {"url": url, "proc": proc, "log": log_path, **exported}
    stop_server(proc)


def classify(url: str, payload, **kw) -> httpx.Response:
    return httpx.post(f"{url}/classify", json=payload, timeout=60, **kw)


def assert_healthy(server) -> None:
    assert server["proc"].poll() is None, "server process died"
    assert httpx.get(f"{server['url']}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{server['url']}/readyz", timeout=10).status_code == 200
    r = classify(server["url"], {"sentences": ["The cat sat on the mat."]})
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] in ("acceptable", "unacceptable")


def test_bentoml_client_classifies(server):
    import bentoml

    version = server["manifest"]["version"]
    with bentoml.SyncHTTPClient(server["url"]) as client:
        assert client.is_ready()
        out = client.classify(sentences=["The cat sat on the mat.", "Mat the on sat cat the."])
    assert out["model"] == f"bertpack-cola:{version}"
    assert len(out["predictions"]) == 2
    for p in out["predictions"]:
        assert p["label"] in ("acceptable", "unacceptable") and p["model_version"] == version
        assert (
            set(p["probabilities"]) == {"acceptable", "unacceptable"}
            and abs(sum(p["probabilities"].values()) - 1) < 1e-5
        )
        assert p["label"] == max(p["probabilities"], key=p["probabilities"].get) and p["truncated"] is False


def test_answers_match_the_engine(server):
    """What the service answers is what the int8 engine computes for the same sentence alone."""
    from serving.engine import OnnxClassifier

    sentences = ["The cat sat on the mat.", "John gave a book Mary to.", "It rained all day."]
    engine = OnnxClassifier(server["artifact"], device="cpu")
    assert engine.variant == server["manifest"]["serving_default"]["cpu"]
    for sentence, expected in zip(sentences, engine.classify(sentences, batch_size=1)):
        got = classify(server["url"], {"sentences": [sentence]}).json()["predictions"][0]
        assert got["label"] == expected["label"]
        for label, prob in expected["probabilities"].items():
            assert abs(got["probabilities"][label] - prob) < 1e-5


def test_info_endpoint(server):
    r = httpx.get(f"{server['url']}/info", timeout=10)
    info = r.json()
    # nothing of the server's folders for clients (it gave the store path: $BENTOML_HOME/models/..., a user's home)
    assert "path" not in info and str(server["home"]) not in r.text and str(server["root"]) not in r.text
    assert info["model"] == f"bertpack-cola:{server['manifest']['version']}" and info["origin"] == "store"
    assert info["engine"]["variant"] == "int8" and info["engine"]["provider"] == "CPUExecutionProvider"
    assert info["parity"]["passed"] is True and "int8" in info["parity"]["rows"]
    assert info["limits"] == {"max_sentences": 64, "max_chars": 1000, "max_tokens": server["manifest"]["max_length"]}
    assert info["batching"]["max_batch_size"] > 1


LONG_TOKENS = " ".join(["word"] * 80)  # 82 tokens, over the tiny model's 64, but only 399 characters
BAD_INPUTS = {
    "empty body object": {},
    "sentences missing": {"sentence": ["typo in the key"]},
    "sentences a string": {"sentences": "The cat sat."},
    "sentences null": {"sentences": None},
    "sentences an object": {"sentences": {"0": "The cat sat."}},
    "empty list": {"sentences": []},
    "non-string item": {"sentences": ["The cat sat.", 42]},
    "null item": {"sentences": [None]},
    "nested list item": {"sentences": [["The cat sat."]]},
    "empty sentence": {"sentences": [""]},
    "whitespace sentence": {"sentences": [" \t\n "]},
    "unicode whitespace sentence": {"sentences": ["\u2003\u00a0"]},
    "over the character limit": {"sentences": ["a" * 1001]},
    "over the token limit without truncate": {"sentences": [LONG_TOKENS]},
    "too many sentences": {"sentences": ["The cat sat."] * 65},
    "truncate not a boolean": {"sentences": ["The cat sat."], "truncate": "yes"},
    "misspelled truncate": {"sentences": ["The cat sat."], "truncat": True},
    "no readable text": {"sentences": ["\u200b\u200b"]},
    "only unknown tokens": {"sentences": ["\U0001f642\U0001f642"]},
    "a list body": ["The cat sat."],
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gets_400_json(server, name):
    r = classify(server["url"], BAD_INPUTS[name])
    assert r.status_code == 400, (name, r.status_code, r.text[:300])
    body = r.json()
    assert "error" in body and body["detail"], body


@pytest.mark.parametrize(
    "body,ctype,status",
    [
        (b'{"sentences": ["The cat sat."', "application/json", 400),  # malformed JSON
        (b"", "application/json", 400),
        (b"\xff\xfe\x00garbage", "application/json", 400),
        (b'sentences=["x"]', "application/x-www-form-urlencoded", 415),
        (b"--xyz\r\ngarbage", "multipart/form-data; boundary=xyz", 415),
    ],
)
def test_malformed_bodies_get_4xx(server, body, ctype, status):
    r = httpx.post(f"{server['url']}/classify", content=body, headers={"content-type": ctype}, timeout=30)
    assert r.status_code == status, r.text[:300]
    assert "error" in r.json()


def test_truncate_on_request(server):
    r = classify(server["url"], {"sentences": [LONG_TOKENS, "The cat sat."], "truncate": True})
    assert r.status_code == 200, r.text
    first, second = r.json()["predictions"]
    assert first["truncated"] is True and first["tokens"] == server["manifest"]["max_length"]
    assert second["truncated"] is False and second["tokens"] == 6


def test_limits_are_inclusive(server):
    r = classify(server["url"], {"sentences": ["a " * 30 + "b" * (1000 - 60)] + ["The cat sat."] * 63})
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["predictions"]) == 64


def test_healthy_after_bad_inputs(server):
    for payload in BAD_INPUTS.values():
        assert classify(server["url"], payload).status_code == 400
    assert_healthy(server)


def _sentence(n_words: int) -> str:
    return " ".join(["cat"] * n_words) + "."  # n_words + 3 tokens: [CLS] ... . [SEP]


def test_good_and_bad_requests_concurrently(server):
    """Bad requests are refused before batching, so they never cost a good neighbour its answer."""
    good = [{"sentences": [_sentence(i % 40 + 1)]} for i in range(40)]
    bad = [
        BAD_INPUTS[k]
        for k in (
            "empty sentence",
            "non-string item",
            "over the token limit without truncate",
            "whitespace sentence",
            "too many sentences",
        )
    ] * 4
    jobs = [("good", i, p) for i, p in enumerate(good)] + [("bad", i, p) for i, p in enumerate(bad)]
    jobs = [j for pair in zip(jobs[::2], jobs[1::2]) for j in pair]  # interleave
    with (
        httpx.Client(base_url=server["url"], timeout=120, limits=httpx.Limits(max_connections=64)) as client,
        concurrent.futures.ThreadPoolExecutor(max_workers=60) as pool,
    ):
        results = list(pool.map(lambda job: (job, client.post("/classify", json=job[2])), jobs))
    for (kind, i, payload), r in results:
        if kind == "good":
            assert r.status_code == 200, r.text[:300]
            assert r.json()["predictions"][0]["tokens"] == i % 40 + 4
        else:
            assert r.status_code == 400, r.text[:300]


def _batch_histogram(url: str) -> tuple[float, float]:
    """(batches, requests) of /classify from BentoML's Prometheus histogram of adaptive batch sizes."""
    count = total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size") and 'method_name="classify"' in line:
            if line.startswith("bentoml_service_adaptive_batch_size_count"):
                count += float(line.rsplit(" ", 1)[1])
            elif line.startswith("bentoml_service_adaptive_batch_size_sum"):
                total += float(line.rsplit(" ", 1)[1])
    return count, total


def test_adaptive_batching_forms_batches_and_keeps_order(server):
    url = server["url"]
    before_info = httpx.get(f"{url}/info", timeout=10).json()["batching"]
    before_count, before_total = _batch_histogram(url)
    n = 48
    # Each client sends one sentence with its own length, so its answer's token count names it.
    sentences = [_sentence(i + 1) for i in range(n)]
    with (
        httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=n)) as client,
        concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool,
    ):
        responses = list(pool.map(lambda s: client.post("/classify", json={"sentences": [s]}), sentences))
        # and a few multi-sentence requests: order inside a request is kept too
        multi = list(
            pool.map(
                lambda k: client.post("/classify", json={"sentences": sentences[k : k + 5][::-1]}), range(0, 40, 5)
            )
        )
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text[:300]
        assert r.json()["predictions"][0]["tokens"] == i + 4
    for k, r in zip(range(0, 40, 5), multi):
        assert [p["tokens"] for p in r.json()["predictions"]] == [i + 4 for i in range(k, k + 5)][::-1]
    after = httpx.get(f"{url}/info", timeout=10).json()["batching"]
    count, total = _batch_histogram(url)
    batches, requests = count - before_count, total - before_total
    sentences_run = after["sentences"] - before_info["sentences"]
    print(
        f"\n{requests:.0f} requests ({sentences_run} sentences) in {batches:.0f} adaptive batches; sizes seen "
        f"{after['sizes']}"
    )
    assert requests == n + 8 and sentences_run == n + 8 * 5
    assert batches < requests  # some requests shared a batch
    assert after["largest"] > 1


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=20,
)
sentence_like = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=" \t\n\r\u00a0\u2003\u200b", max_size=5),
    st.text(min_size=990, max_size=1100),
    st.just(LONG_TOKENS),
    json_value,
)
payloads = st.one_of(
    st.fixed_dictionaries(
        {"sentences": st.lists(sentence_like, max_size=70)},
        optional={"truncate": st.one_of(st.booleans(), json_value), "extra": json_value},
    ),
    st.fixed_dictionaries({"sentences": json_value}),
    json_value,
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
_fuzz_count = {"n": 0}


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(payload=payloads)
def test_fuzz_never_5xx(server, payload):
    _fuzz_count["n"] += 1
    if isinstance(payload, bytes):
        r = httpx.post(
            f"{server['url']}/classify", content=payload, headers={"content-type": "application/json"}, timeout=60
        )
    else:
        r = classify(server["url"], payload)
    assert r.status_code < 500, (payload, r.status_code, r.text[:300])
    assert r.status_code in (200, 400), (r.status_code, r.text[:300])
    body = r.json()
    if r.status_code == 200:
        assert len(body["predictions"]) == len(payload["sentences"])
    else:
        assert "error" in body


def test_healthy_after_fuzz(server):
    assert _fuzz_count["n"] >= 500 or _fuzz_count["n"] == 0  # 0 when the fuzz test was deselected
    assert_healthy(server)
    log = server["log"].read_text()
    assert "Traceback" not in log  # start-up was clean, and client errors log one line each, no traceback
    assert (
        f"serving bertpack-cola:{server['manifest']['version']} (int8 from store) with model_int8.onnx on "
        "CPUExecutionProvider" in log
    )


# -- error bodies: every 4xx is JSON and names the fix --------------------------------------------------


@pytest.mark.parametrize(
    "payload,wanted",
    [
        (
            {"sentences": ["The cat sat."] * 65},
            "sentences: send 1 to 64 sentences per request (got 65); split the list",
        ),
        ({"sentences": []}, "sentences: the list is empty; send 1 to 64 sentences"),
        ({"sentences": ["The cat sat.", 42]}, "sentences[1]: not a string; send each sentence as a JSON string"),
        ({"sentences": [" "]}, "sentences[0]: empty or only whitespace; remove it or send some text"),
        ({"sentences": ["a" * 1001]}, "sentences[0]: over 1000 characters"),
        ({"sentences": ["x"], "truncate": "yes"}, "truncate: must be a JSON boolean, true or false"),
        ({"sentences": ["x"], "truncat": True}, "truncat: unknown field; the valid fields are sentences, truncate"),
        ({"sentence": ["x"]}, "sentence: unknown field; the valid fields are sentences, truncate"),
        ({"sentences": [LONG_TOKENS]}, 'over the model\'s limit of 64; shorten it or send "truncate": true'),
        ({"sentences": ["\U0001f642\U0001f642"]}, "sentences[0]: sentence has no text the tokenizer can read"),
        (["The cat sat."], 'body: must be a JSON object such as {"sentences": ['),
    ],
    ids=[
        "65 sentences",
        "empty list",
        "not a string",
        "whitespace",
        "1001 chars",
        "truncate a string",
        "misspelled truncate",
        "misspelled sentences",
        "too many tokens",
        "only [UNK]",
        "list body",
    ],
)
def test_400_body_names_problem_and_fix(server, payload, wanted):
    r = classify(server["url"], payload)
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json"), r.text[:300]
    body = r.json()
    assert wanted in body["error"], body
    assert "validation error for" not in body["error"]
    assert len(body["errors"]) == len(body["detail"]) >= 1 and any(wanted in line for line in body["errors"])


def test_400_body_lists_every_problem(server):
    body = classify(server["url"], {"sentences": ["", 3, "ok"], "truncate": "yes", "extra": 1}).json()
    assert body["error"].startswith("4 problems: ") and len(body["errors"]) == 4
    assert [line.split(":")[0] for line in body["errors"]] == ["sentences[0]", "sentences[1]", "truncate", "extra"]


def test_malformed_json_names_the_fix(server):
    r = httpx.post(
        f"{server['url']}/classify",
        content=b'{"sentences": ["x"',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"].startswith("body: not valid JSON")
    assert 'send a JSON object such as {"sentences"' in r.json()["error"]


@pytest.mark.parametrize(
    "body,wanted",
    [
        (
            '\ufeff{"sentences": ["The cat sat."]}'.encode(),
            "UTF-8 byte order mark (BOM, bytes EF BB BF)",
        ),  # e.g. a file saved by Notepad
        (
            '{"sentences": ["The cat sat."]}'.encode("utf-16"),
            "UTF-16 or UTF-32 text, not UTF-8",
        ),  # e.g. PowerShell's Out-File
        ('{"sentences": ["The cat sat."]}'.encode("utf-16-le"), "UTF-16 or UTF-32 text, not UTF-8"),
    ],
    ids=["utf-8 bom", "utf-16", "utf-16 without bom"],
)
def test_json_that_is_not_plain_utf8_says_why(server, body, wanted):
    """The parser's own line ("expected value at line 1 column 1") names nothing the sender can see; a BOM inside a
    sentence, by contrast, is text the tokenizer drops, so it gets the sentence's answer (as `predict -` gives it)."""
    r = httpx.post(f"{server['url']}/classify", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["errors"] == [r.json()["error"]], r.text[:300]
    assert wanted in r.json()["error"] and "send the JSON as UTF-8 without a byte order mark" in r.json()["error"], (
        r.text[:300]
    )
    plain, marked = (classify(server["url"], {"sentences": [text]}) for text in ("The cat sat.", "\ufeffThe cat sat."))
    assert marked.status_code == 200 and marked.json()["predictions"] == plain.json()["predictions"]


@pytest.mark.parametrize(
    "method,path,status,wanted",
    [
        ("GET", "/nope", 404, "no endpoint GET /nope; the endpoints are POST /classify"),
        ("POST", "/classifyy", 404, "no endpoint POST /classifyy"),
        # 405 lines in full: the Allow header's order varies between server starts, the message must not
        ("GET", "/classify", 405, "GET is not allowed on /classify; use POST with a JSON body"),
        ("PUT", "/info", 405, "PUT is not allowed on /info; use GET"),
    ],
)
def test_404_and_405_are_json(server, method, path, status, wanted):
    r = httpx.request(method, f"{server['url']}{path}", timeout=10)
    assert r.status_code == status and r.headers["content-type"].startswith("application/json"), (
        r.status_code,
        r.text[:200],
    )
    body = r.json()
    assert body["error"] == wanted if status == 405 else wanted in body["error"], body["error"]
    assert "GET /docs.json (OpenAPI)" in body["endpoints"]


def test_docs_json_is_the_openapi_spec(server):
    spec = httpx.get(f"{server['url']}/docs.json", timeout=10).json()
    assert "/classify" in spec["paths"] and "/infer" not in spec["paths"]  # one HTTP pass: no internal endpoint


def test_client_errors_log_one_line(server):
    """A 400 is the client's mistake: one WARNING line in the server log, no ERROR, no traceback."""
    before = server["log"].read_text()
    marker = "unique-misspelled-field-3f9a"
    assert classify(server["url"], {"sentences": ["x"], marker: 1}).status_code == 400
    time.sleep(1)  # let the server flush its log
    new = server["log"].read_text()[len(before) :]
    assert "Traceback" not in new and "[ERROR]" not in new, new[-3000:]
    lines = [line for line in new.splitlines() if marker in line]
    assert len(lines) == 1 and "[WARNING]" in lines[0] and "client error, 400" in lines[0], new[-3000:]

    # The mistakes found after tokenization, and a form body, are answered by bertpack itself: logged the same way.
    before = server["log"].read_text()
    assert classify(server["url"], {"sentences": ["word " * 200]}).status_code == 400
    assert classify(server["url"], {"sentences": ["\U0001f642"]}).status_code == 400
    assert httpx.post(f"{server['url']}/classify", data={"sentences": "x"}, timeout=60).status_code == 415
    time.sleep(1)
    new = server["log"].read_text()[len(before) :]
    assert "Traceback" not in new and "[ERROR]" not in new, new[-3000:]
    warnings = [line for line in new.splitlines() if "[WARNING]" in line]
    for fragment in (
        "POST /classify: client error, 400 (sentences[0]: sentence has 20",
        "over the model's limit",
        "POST /classify: client error, 400 (sentences[0]: sentence has no text the tokenizer can read",
        "POST /classify: client error, 415 (unsupported Content-Type 'application/x-www-form-urlencoded'",
    ):
        assert sum(fragment in line for line in warnings) == 1, (fragment, new[-3000:])


def test_oversized_bodies_get_413_before_they_are_parsed(server):
    """A body over MAX_BODY_BYTES is refused with a JSON 413 naming the limit and the fix: by its Content-Length before
    any of it is read, and a chunked body (no Content-Length) as soon as it grows past the bound. It was parsed whole
    first (100 MB: seconds of the event loop, gigabytes of memory, then a 400)."""
    from serving.schema import MAX_BODY_BYTES

    big = json.dumps({"sentences": ["word " * 150] * 2000}).encode()  # 1.5 MB of valid-looking JSON
    assert len(big) > MAX_BODY_BYTES
    r = httpx.post(f"{server['url']}/classify", content=big, headers={"content-type": "application/json"}, timeout=60)
    assert (
        r.status_code == 413
        and f"over the {MAX_BODY_BYTES} bytes" in r.json()["error"]
        and "split larger jobs" in r.json()["error"]
    )

    def chunks():
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    r = httpx.post(
        f"{server['url']}/classify", content=chunks(), headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 413 and "bytes a request may hold" in r.json()["error"], r.text[:500]
    assert_healthy(server)


def test_unknown_paths_share_one_metrics_label(server):
    """Each unknown URL used to become its own Prometheus series (until /metrics broke); now they count as "other"."""
    probes = [f"/probe-{i}-{os.getpid()}-x" for i in range(20)]
    for path in probes:
        assert httpx.get(f"{server['url']}{path}", timeout=10).status_code == 404
    assert classify(server["url"], {"sentences": ["The cat sat."]}).status_code == 200
    metrics = httpx.get(f"{server['url']}/metrics", timeout=30).text
    assert not any(path in metrics for path in probes)
    assert 'endpoint="other"' in metrics and 'endpoint="/classify"' in metrics


def test_other_refusals_are_json_naming_the_fix(server):
    """BentoML's own 415 (a pickle body) and a client that hangs up mid-body: JSON and one log line, not a traceback."""
    r = httpx.post(
        f"{server['url']}/classify",
        content=b"x",
        headers={"content-type": "application/vnd.bentoml+pickle"},
        timeout=30,
    )
    assert r.status_code == 415 and r.json() == {
        "error": "unsupported Content-Type 'application/vnd.bentoml+pickle': send a JSON "
        "body with Content-Type: application/json"
    }
    import socket

    before = server["log"].read_text()
    host, port = server["url"].removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b'POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"sent'
        )
        time.sleep(0.5)
    time.sleep(1.5)
    new = server["log"].read_text()[len(before) :]
    assert "Traceback" not in new and "ClientDisconnect" not in new, new[-3000:]
    assert_healthy(server)


def test_log_lines_are_not_doubled(server):
    log = server["log"].read_text()
    assert log.count(f"serving bertpack-cola:{server['manifest']['version']} (int8 from store)") == 1, log[:3000]
    assert log.count("loaded model_int8.onnx (int8) on CPUExecutionProvider") == 1, log[:3000]


def test_bentoml_build(server, tmp_path):
    """`bentoml build` from the repo root packs the service code and the model reference."""
    env = {**os.environ, "BENTOML_HOME": str(server["home"]), "BENTOML_DO_NOT_TRACK": "True"}
    proc = subprocess.run(
        [BENTOML, "build", "--output", "tag"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    tag = proc.stdout.strip().splitlines()[-1].replace("__tag__:", "")
    name, version = tag.split(":")
    bento = server["home"] / "bentos" / name / version
    info = (bento / "bento.yaml").read_text()
    assert f"bertpack-cola:{server['manifest']['version']}" in info or server["manifest"]["version"] in info
    assert (bento / "src" / "serving" / "service.py").is_file() and (bento / "src" / "bertpack" / "errors.py").is_file()
    assert not (bento / "src" / "trainer").exists() and not (bento / "src" / "export").exists()
    # Every project module the service imports, directly or through another (inside functions too), is in the Bento:
    # the tests import from the repo, so a module left out of bentofile.yaml's include list would only fail in
    # production.
    import ast

    todo, seen = ["serving.service"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = bento / "src" / (module.replace(".", "/") + ".py")
        assert path.is_file(), (
            f"{module} is imported by the service but missing from the Bento (bentofile.yaml include)"
        )
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                if isinstance(node, ast.ImportFrom) and node.module
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )  # `from serving import x`: x too
            todo += [
                n
                for n in names
                if n.split(".")[0] in ("serving", "bertpack") and (REPO / (n.replace(".", "/") + ".py")).is_file()
            ]
    assert {
        "serving.engine",
        "serving.http_guard",
        "serving.bentoml_compat",
        "serving.schema",
        "serving.source",
        "bertpack.errors",
    } <= seen
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime-gpu" in reqs and "torch" not in reqs and "transformers" not in reqs
    # What the Bento ships (`bentoml export`, as `containerize` and `push` pack it): the variants a service loads, not
    # the export's fp32 reference graph (91 MB of the embedded model's 261 MB, never loaded unless asked for by name).
    import tarfile

    archive = tmp_path / "bertpack.bento"
    proc = subprocess.run(
        [BENTOML, "export", tag, str(archive)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with tarfile.open(archive) as tar:
        shipped = {
            Path(m.name).name
            for m in tar.getmembers()
            if f"models/bertpack-cola/{server['manifest']['version']}/" in m.name
        }
    served = {v["file"] for k, v in server["manifest"]["variants"].items() if k != "fp32"}
    assert served <= shipped and "model.onnx" not in shipped, shipped
    # The image's environment reaches the Dockerfile `bentoml containerize` builds (under `docker.env` it was dropped).
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    for setting in ("BERTPACK_DEVICE=auto", "NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"):
        name, value = setting.split("=")
        assert f"ENV {name}=" in dockerfile and f"ARG {setting}" in dockerfile, (
            f"{setting} missing from the image:\n{dockerfile}"
        )


def test_a_bento_serves_what_it_was_built_with(server, tmp_path, tiny_run, synthetic_cola):
    """A built Bento serves the model version it was built with, not whatever a later export made the store's
    "latest"; and a relative BERTPACK_MODEL names the folder from where `bentoml serve` was started (its workers
    run in the Bento's own folder, and used to look the path up again from there)."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(server["home"], home)  # a store of its own: the other tests keep theirs
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    proc = subprocess.run(
        [BENTOML, "build", "--output", "tag"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    bento = proc.stdout.strip().splitlines()[-1].replace("__tag__:", "")
    later = run_cli(
        "export",
        str(tiny_run),
        "--out",
        str(tmp_path / "later"),
        "--data",
        str(synthetic_cola),
        env={"BENTOML_HOME": str(home)},
    )
    assert later.returncode == 0, later.stderr[-2000:]
    built, newer = (
        server["manifest"]["version"],
        json.loads((tmp_path / "later" / "manifest.json").read_text())["version"],
    )
    assert built != newer
    for extra, expected in (
        ({}, f"bertpack-cola:{built}"),
        ({"BERTPACK_MODEL": os.path.relpath(tmp_path / "later", REPO)}, f"bertpack-cola:{newer}"),
    ):
        proc_, url = start_server(home, tmp_path / "serve.log", env=extra, target=bento)
        try:
            info = httpx.get(f"{url}/info", timeout=10).json()
        finally:
            stop_server(proc_)
        assert info["model"] == expected, (extra, info["model"], info.get("path"))


def test_refuses_to_serve_a_corrupted_artifact(server, tmp_path):
    """The service re-hashes every file before serving: a modified model stops start-up with the reason."""
    import shutil

    art = tmp_path / "art"
    shutil.copytree(server["artifact"], art)
    with open(art / "model_optimized.onnx", "r+b") as fh:  # a file the int8 engine would not even read
        fh.seek(100)
        fh.write(b"\x00\x01\x02\x03")
    code = (
        "import os, sys; os.environ['BERTPACK_MODEL'] = sys.argv[1]\n"
        "from serving.service import Bertpack\n"
        "try:\n    Bertpack.inner()\nexcept Exception as e:\n    print(type(e).__name__, e); sys.exit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(art)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BENTOML_HOME": str(server["home"])},
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr[-2000:]
    assert "BertpackError" in proc.stdout and "model_optimized.onnx does not match its sha256" in proc.stdout


def test_serves_an_artifact_folder_by_env(server, tmp_path):
    """BERTPACK_MODEL takes an artifact folder as well as a tag (checked in-process, no second server)."""
    code = (
        "import os, sys, json; os.environ['BERTPACK_MODEL'] = sys.argv[1]\n"
        "from serving.service import Bertpack\n"
        "svc = Bertpack.inner()\n"
        "print(json.dumps({'origin': svc.source.origin, 'tag': svc.source.tag, 'variant': svc.engine.variant}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(server["artifact"])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BENTOML_HOME": str(tmp_path / "empty-home")},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"origin": "folder", "tag": f"bertpack-cola:{server['manifest']['version']}", "variant": "int8"}


def test_serves_the_variant_asked_for(server, tmp_path):
    """BERTPACK_VARIANT=optimized: a real second server answers with the exact fp32 graph, so a sentence gets the
    same probabilities alone and beside other sentences (the int8 default cannot promise that)."""
    from serving.engine import OnnxClassifier

    proc, url = start_server(
        tmp_path / "empty-home",
        tmp_path / "serve.log",
        env={"BERTPACK_MODEL": str(server["artifact"]), "BERTPACK_VARIANT": "optimized"},
    )
    try:
        info = httpx.get(f"{url}/info", timeout=10).json()
        assert info["engine"]["variant"] == "optimized" and info["engine"]["file"] == "model_optimized.onnx"
        sentence = "The cat sat on the mat."
        alone = classify(url, {"sentences": [sentence]}).json()["predictions"][0]
        crowd = classify(
            url, {"sentences": ["Who do you think that left?", sentence, "It rained " + "and rained " * 20 + "."]}
        )
        beside = crowd.json()["predictions"][1]
        expected = OnnxClassifier(server["artifact"], variant="optimized", device="cpu").classify([sentence])[0]
        for label, prob in expected["probabilities"].items():
            assert (
                abs(alone["probabilities"][label] - prob) < 1e-5 and abs(beside["probabilities"][label] - prob) < 1e-5
            )
    finally:
        stop_server(proc)


def test_overload_answers_503_json(server, tmp_path):
    """A request that cannot be batched within BERTPACK_MAX_LATENCY_MS gets 503 with a JSON body naming the fix;
    the server keeps answering. (A 1 ms bound makes the adaptive batcher shed load at once.)"""
    proc, url = start_server(
        tmp_path / "empty-home",
        tmp_path / "serve.log",
        env={"BERTPACK_MODEL": str(server["artifact"]), "BERTPACK_MAX_LATENCY_MS": "1"},
    )
    try:
        assert httpx.get(f"{url}/info", timeout=10).json()["batching"]["max_latency_ms"] == 1
        shed = []
        with (
            httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=64)) as client,
            concurrent.futures.ThreadPoolExecutor(max_workers=48) as pool,
        ):
            for _ in range(10):  # bursts until the batcher sheds one (the first burst does, in practice)
                replies = list(
                    pool.map(lambda i: client.post("/classify", json={"sentences": [_sentence(i % 30 + 1)]}), range(48))
                )
                assert {r.status_code for r in replies} <= {200, 503}, [
                    r.text[:200] for r in replies if r.status_code not in (200, 503)
                ]
                shed = [r for r in replies if r.status_code == 503]
                if shed:
                    break
        assert shed, "no request was shed with a 1 ms latency bound"
        assert shed[0].headers["content-type"].startswith("application/json") and shed[0].headers["retry-after"] == "1"
        assert shed[0].json() == {
            "error": "server overloaded: the request could not be answered within 0.001 s "
            "(batching queue wait plus estimated run time); "
            "retry later, or add replicas/workers"
        }
        assert proc.poll() is None and httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert "503 overloaded" in (tmp_path / "serve.log").read_text()
    finally:
        stop_server(proc)


def test_sentence_of_exactly_the_token_limit_is_not_truncated(server):
    limit = server["manifest"]["max_length"]
    exact = " ".join(["word"] * (limit - 2))  # [CLS] + limit-2 words + [SEP]
    for truncate in (False, True):
        r = classify(
            server["url"],
            {"sentences": [exact, exact + " word"], "truncate": True} if truncate else {"sentences": [exact]},
        )
        assert r.status_code == 200, r.text[:300]
        first = r.json()["predictions"][0]
        assert (first["tokens"], first["truncated"]) == (limit, False)
        if truncate:
            second = r.json()["predictions"][1]
            assert (second["tokens"], second["truncated"]) == (limit, True)


def test_traffic_limits_and_hang_ups_answer_as_documented(server, tmp_path):
    """BentoML's own request-timeout (504) and max_concurrency (429) answers are JSON naming the fix, 429 with
    Retry-After; a /classify takes one max_concurrency slot (with 4 slots, 4 requests at a time get through);
    so with 4 slots no request got through, and 450 clients got 429s below the documented 512); a client that hangs up
    mid-body counts as 499 in /metrics and the access log, not 500. The limits are made small (3 s, 4 slots) through
    BentoML's configuration so that the test is quick; the answers name those limits, not the decorator's."""
    import socket

    log = tmp_path / "serve.log"
    proc, url = start_server(
        tmp_path / "empty-home",
        log,
        env={
            "BERTPACK_MODEL": str(server["artifact"]),
            "BENTOML_CONFIG_OPTIONS": "services.bertpack.traffic.timeout=3 services.bertpack.traffic.max_concurrency=4",
        },
    )
    host, port = url.removeprefix("http://").split(":")

    def raw(head: bytes, hang_up_after: float | None = None) -> bytes:
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.sendall(
                b"POST /classify HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n" + head
            )
            if hang_up_after is not None:
                time.sleep(hang_up_after)
                return b""
            answer = b""
            while chunk := sock.recv(65536):  # the server closes the connection after its answer
                answer += chunk
            return answer

    try:
        answer = raw(b'Content-Length: 100\r\n\r\n{"sent')  # the rest of the body never comes: the 3 s timeout answers
        assert answer.startswith(b"HTTP/1.1 504"), answer[:300]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {
            "error": "the request was not answered within 3 s (the "
            "server's request timeout): send the whole body at once "
            "(a body sent slowly holds a slot), or retry"
        }
        for _ in range(2):
            raw(b'Content-Length: 100\r\n\r\n{"sent', hang_up_after=0.3)
        with (
            httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=32)) as client,
            concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool,
        ):
            replies = list(
                pool.map(
                    lambda i: client.post("/classify", json={"sentences": [_sentence(i % 30 + 1)] * 64}), range(16)
                )
            )
        statuses = [r.status_code for r in replies]
        assert set(statuses) <= {200, 429} and statuses.count(200) >= 4, statuses  # every request let in is answered
        for r in replies:
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1" and r.json()["error"].startswith(
                    "too many requests in flight at once"
                ), r.text
                assert r.json()["error"].endswith("(the server takes 4 at a time)"), (
                    r.text
                )  # the limit in force, not 512
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        counts = {
            line.split('http_response_code="')[1][:3]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("bentoml_service_request_total{") and 'endpoint="/classify"' in line
        }
        assert counts.get("499") == 2 and not counts.get("500"), counts
        assert "status=499" in log.read_text() and "status=500" not in log.read_text()
        assert proc.poll() is None and httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        stop_server(proc)


def test_workers_stop_when_bentoml_serve_is_killed(server, tmp_path):
    """`bentoml serve` killed outright (SIGKILL: nothing of it runs) takes its worker with it: the worker used to stay,
    alone in its own process group, answering on the port, so that a new `bentoml serve` there failed."""
    import signal

    proc, url = start_server(
        tmp_path / "empty-home", tmp_path / "serve.log", env={"BERTPACK_MODEL": str(server["artifact"])}
    )
    worker = httpx.get(f"{url}/info", timeout=10).json()["pid"]
    assert worker != proc.pid
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while (
            time.monotonic() < deadline
            and Path(f"/proc/{worker}").exists()
            and "zombie" not in Path(f"/proc/{worker}/status").read_text(errors="replace")
        ):
            time.sleep(0.2)
        assert not Path(f"/proc/{worker}").exists() or "zombie" in Path(f"/proc/{worker}/status").read_text(
            errors="replace"
        ), "the worker outlived bentoml serve"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/readyz", timeout=3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)


def test_two_workers_each_serve_with_their_share_of_the_cores(server, tmp_path):
    """BERTPACK_WORKERS=2: two processes answer /classify, each with its own engine, whose intra-op threads are the
    physical cores shared between them; answers are the same whichever worker gives them."""
    from serving.engine import physical_cores

    proc, url = start_server(
        tmp_path / "empty-home",
        tmp_path / "serve.log",
        env={"BERTPACK_MODEL": str(server["artifact"]), "BERTPACK_WORKERS": "2"},
    )
    try:
        infos, answers = {}, set()
        with (
            httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=16)) as client,
            concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool,
        ):
            for _ in range(20):  # new connections land on either worker; bounded tries until both answered
                for info in pool.map(lambda _: httpx.get(f"{url}/info", timeout=10).json(), range(16)):
                    infos[info["pid"]] = info
                replies = list(
                    pool.map(
                        lambda _: client.post("/classify", json={"sentences": ["The cat sat on the mat."]}), range(16)
                    )
                )
                assert all(r.status_code == 200 for r in replies), [r.text[:200] for r in replies]
                answers |= {json.dumps(r.json()["predictions"][0], sort_keys=True) for r in replies}
                if len(infos) == 2:
                    break
        assert len(infos) == 2, f"only {list(infos)} answered"
        assert all(
            i["workers"] == 2 and i["engine"]["threads"] == max(1, physical_cores() // 2) for i in infos.values()
        )
        assert len(answers) == 1  # same model, same answer
    finally:
        stop_server(proc)


def test_requests_larger_than_a_batch_remainder_keep_their_order(server):
    """Requests of 40 sentences with 64 sentences per adaptive batch: BentoML splits a request across two batches
    when it does not fit the one being filled, and joins its answers again; each request gets its own, in order."""
    url = server["url"]
    requests = [[_sentence((r * 7 + i) % 40 + 1) for i in range(40)] for r in range(6)]
    with (
        httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=6)) as client,
        concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool,
    ):
        replies = list(pool.map(lambda s: client.post("/classify", json={"sentences": s}), requests))
    for sentences, r in zip(requests, replies):
        assert r.status_code == 200, r.text[:300]
        assert [p["tokens"] for p in r.json()["predictions"]] == [len(s.split()) + 3 for s in sentences]
    batching = httpx.get(f"{url}/info", timeout=10).json()["batching"]
    assert batching["largest"] <= 64 and batching["sizes"].get("64", 0) >= 1  # a full batch: some request was split
