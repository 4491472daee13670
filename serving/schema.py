"""The HTTP contract of the service: request limits and the typed request/response models.

The limits live in the API's type annotations, so BentoML validates every request (and answers
400 with a JSON body) before the request reaches the service code, let alone a shared batch.
"""

from __future__ import annotations

from typing import Annotated

import re

from pydantic import AfterValidator, BaseModel, Field, StrictInt, StrictStr

# Documented limits (README, section serve). CoLA sentences are under 250 characters; 1000 leaves
# room for real text while bounding the work one request can ask for.
MAX_SENTENCES = 64  # per request
MAX_CHARS = 1000  # per sentence, before tokenization
# Token ids accepted by the internal batched endpoint (the model's own limit is applied there too).
MAX_TOKEN_ID = 2**31 - 1
MAX_IDS = 512
# A whole request body: the largest valid /classify (64 x 1000 characters, each as a 12-byte \ud83d\ude00-style escape at
# worst) is under 800 kB. BentoML reads a body whole before validating it, so without this bound a 100 MB body took
# seconds of the event loop and gigabytes of memory before its 400.
MAX_BODY_BYTES = 1 << 20


def _readable(text: str) -> str:
    if not text.strip():
        raise ValueError("sentence is empty or only whitespace")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("sentence is not valid Unicode text (lone surrogate)") from None
    return text


Sentence = Annotated[StrictStr, Field(min_length=1, max_length=MAX_CHARS), AfterValidator(_readable)]
Sentences = Annotated[list[Sentence], Field(min_length=1, max_length=MAX_SENTENCES,
                                            description=f"1 to {MAX_SENTENCES} sentences of at most {MAX_CHARS} characters")]
TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0, le=MAX_TOKEN_ID)]], Field(min_length=1, max_length=MAX_IDS)]
# At most MAX_SENTENCES sequences per /infer request, as /classify (adaptive batches may merge several requests).
EncodedBatch = Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_SENTENCES,
                                               description=f"1 to {MAX_SENTENCES} sequences of 1 to {MAX_IDS} token ids")]


class Prediction(BaseModel):
    label: str = Field(description="the most probable of the model's labels (GET /info lists them; CoLA: acceptable "
                                   "or unacceptable)")
    probabilities: dict[str, float] = Field(description="probability of each of the model's labels")
    model_version: str
    tokens: int = Field(description="tokens the model read, [CLS] and [SEP] included")
    truncated: bool = Field(description="the sentence was cut to the model's max length (only with truncate=true)")


class ClassifyResponse(BaseModel):
    model: str = Field(description="model tag, NAME:<version> (bertpack-cola:<version> for CoLA)")
    predictions: list[Prediction]


# -- 400 bodies ------------------------------------------------------------------------------
# Every 400 (BentoML's typed validation, rewritten by the service's middleware, and the service's own
# token checks) has the same shape: {"error": every problem with its fix, "errors": [one line per
# problem], "detail": [pydantic-style {"type", "loc", "msg"}]}.

FIELDS = {"/classify": ("sentences", "truncate"), "/infer": ("ids",)}
EXAMPLE = {"/classify": '{"sentences": ["The cat sat on the mat."]}', "/infer": '{"ids": [[101, 1996, 4937, 102]]}'}
# BentoML's batcher sheds a request when its queue wait plus the batch's estimated run time reaches the bound.
OVERLOADED = ("server overloaded: the request could not be answered within {seconds:g} s (batching queue wait plus estimated run time); "
              "retry later, or add replicas/workers")


TOO_LARGE = ("request body of {got} is over the {limit} bytes a request may hold; send at most "
             f"{MAX_SENTENCES} sentences of at most {MAX_CHARS} characters per request, and split larger jobs into several requests")
TOO_MANY = ("too many requests in flight at once: retry after a moment, or add replicas/workers "
            "(the server takes {limit} at a time)")
TIMED_OUT = ("the request was not answered within {seconds:g} s (the server's request timeout): send the whole body at once "
             "(a body sent slowly holds a slot), or retry")


def _where(loc) -> str:
    if not loc:
        return "body"
    out = str(loc[0])
    for part in loc[1:]:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _got(msg: str) -> str:
    found = re.search(r"not (\d+)\s*$", msg)
    return f" (got {found.group(1)})" if found else ""


def problem_line(entry: dict, route: str = "/classify") -> str:
    """One readable line for one validation problem: where, what, and how to fix it."""
    kind, loc, msg = entry.get("type", ""), tuple(entry.get("loc") or ()), str(entry.get("msg", ""))
    where, fields = _where(loc), FIELDS.get(route, ())
    example = EXAMPLE.get(route, "a JSON object (see GET /docs.json)")
    top = loc[0] if loc else None
    if kind == "json_invalid":
        return f"body: not valid JSON ({msg.removeprefix('Invalid JSON: ')}); send a JSON object such as {example}"
    if not loc or kind in ("model_type", "model_attributes_type", "dict_type") and len(loc) <= 1:
        return f"body: must be a JSON object such as {example}"
    if kind == "extra_forbidden":
        return f"{where}: unknown field; the valid fields are {', '.join(fields)} (check the spelling)"
    if kind == "missing" and len(loc) == 1:
        return f"{where}: missing; send {example}"
    lists = {"sentences": ("strings", "sentences"), "ids": ("token-id lists", "sequences")}  # field: (items, noun)
    if top in lists and len(loc) == 1:
        items, noun = lists[top]
        if kind == "list_type":
            return f"{top}: must be a list of {items}; send {example}"
        if kind == "too_short":
            return f"{top}: the list is empty; send 1 to {MAX_SENTENCES} {noun}"
        if kind == "too_long":
            return f"{top}: send 1 to {MAX_SENTENCES} {noun} per request{_got(msg)}; split the list over several requests"
    if top == "sentences":
        if len(loc) > 1:
            if kind == "string_type":
                return f"{where}: not a string; send each sentence as a JSON string"
            if kind == "string_too_short" or (kind == "value_error" and "empty" in msg):
                return f"{where}: empty or only whitespace; remove it or send some text"
            if kind == "string_too_long":
                return f"{where}: over {MAX_CHARS} characters{_got(msg)}; shorten it or split it into several sentences"
            if kind == "value_error" and "Unicode" in msg:
                return f"{where}: not valid Unicode text (lone surrogate); send UTF-8 text"
            if kind in ("no_tokens", "too_many_tokens"):
                return f"{where}: {msg}"
    if top == "truncate" and kind == "bool_type":
        return "truncate: must be a JSON boolean, true or false (not a string or number)"
    if top == "ids":
        if len(loc) == 2:
            if kind == "list_type":
                return f"{where}: must be a list of token ids; send e.g. [101, 1996, 102]"
            if kind == "too_short":
                return f"{where}: empty; send at least one token id"
            if kind == "too_long":
                return f"{where}: over {MAX_IDS} token ids{_got(msg)}; cut the sequence (the model reads at most its max_length)"
        elif len(loc) > 2:
            return f"{where}: must be a whole number from 0 to {MAX_TOKEN_ID} (a token id, not a boolean, float or string)"
    return f"{where}: {msg}; see GET /docs.json for the request schema"


def not_utf8(head: bytes) -> str | None:
    """Why a body that opens with `head` is not the UTF-8 JSON the parser reads (None when nothing shows): its
    error, "expected value at line 1 column 1", would not name an invisible byte order mark or a UTF-16 encoding."""
    if head.startswith(b"\xef\xbb\xbf"):
        return "it starts with a UTF-8 byte order mark (BOM, bytes EF BB BF)"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head[:2]:
        return "it is UTF-16 or UTF-32 text, not UTF-8"
    return None


def error_body(detail: list[dict], route: str = "/classify", head: bytes = b"") -> dict:
    """The JSON body of a 400: every problem on one line, with its fix. `head`: the request body's first bytes."""
    detail = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in detail]
    lines = [problem_line(e, route) for e in detail]
    if (why := not_utf8(head)) and [e.get("type") for e in detail] == ["json_invalid"]:
        lines = [f"body: not valid JSON ({why}); send the JSON as UTF-8 without a byte order mark, such as {EXAMPLE.get(route, '{}')}"]
    error = lines[0] if len(lines) == 1 else f"{len(lines)} problems: " + " | ".join(lines)
    return {"error": error, "errors": lines, "detail": detail}


def too_long_detail(too_long: list[tuple[int, int]], limit: int) -> list[dict]:
    """Sentences whose token count (known only after tokenization) is over the model's limit."""
    return [{"type": "too_many_tokens", "loc": ["sentences", i],
             "msg": f"sentence has {n} tokens, over the model's limit of {limit}; shorten it or send \"truncate\": true"}
            for i, n in too_long]


def no_tokens_detail(indexes: list[int]) -> list[dict]:
    """Sentences with nothing but [UNK] (or nothing at all) between [CLS] and [SEP]."""
    return [{"type": "no_tokens", "loc": ["sentences", i],
             "msg": "sentence has no text the tokenizer can read (only emoji or symbols the vocabulary lacks, invisible characters, or words over 100 characters); send words"}
            for i in indexes]
