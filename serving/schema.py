"""The HTTP contract of the service: request limits, the typed request/response models, and the 400 bodies.

The limits live in the API's types, so every request is validated (400 with a JSON body) before it joins a shared
batch: first the JSON shape (list, strings, non-blank, character and count limits), then the token limit, checked
with the served tokenizer (`ClassifyInput`), so the batch receives token ids it cannot fail on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import bentoml
from bentoml.validators import ContentType
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

# CoLA sentences are under 250 characters; 1000 leaves room for real text while bounding the work one request asks for.
MAX_SENTENCES = 64  # per request
MAX_CHARS = 1000  # per sentence, before tokenization
# A whole request body: the largest valid /classify (64 x 1000 characters, each as a 12-byte \ud83d\ude00-style escape
# at worst) is under 800 kB; BentoML reads a body whole before validating it, so a larger one is refused unread.
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
Sentences = Annotated[
    list[Sentence],
    Field(
        min_length=1,
        max_length=MAX_SENTENCES,
        description=f"1 to {MAX_SENTENCES} sentences of at most {MAX_CHARS} characters",
    ),
]


class ClassifyRequest(BaseModel):
    """POST /classify's body. A misspelled field is refused rather than ignored (extra="forbid")."""

    model_config = ConfigDict(extra="forbid", title="ClassifyRequest")
    sentences: Sentences
    truncate: StrictBool = Field(
        False, description="cut a sentence over the model's token limit instead of refusing it"
    )


@dataclass(frozen=True, slots=True)
class Tokenized:
    """One sentence as the batch receives it: token ids within the model's limit, and whether they were cut to it."""

    ids: list[int]
    truncated: bool


class Tokenizes(Protocol):
    """What ClassifyInput needs of the service that is serving."""

    def tokenize(self, request: ClassifyRequest) -> list[Tokenized]:
        """The request's sentences as token ids, or a ValidationError naming each sentence the model cannot take."""


class ClassifyInput(bentoml.IODescriptor):
    """What /classify's batch receives for one request: its sentences as Tokenized. Clients send a ClassifyRequest
    (its JSON schema is this spec's, in /docs.json); it is validated, then tokenized by the service that is serving,
    so a request over the token limit is refused (400) before it joins a batch."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    sentences: list[Tokenized]

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> ClassifyInput:
        request = ClassifyRequest.model_validate_json(json_data, **kwargs)
        service: Tokenizes = bentoml.get_current_service()
        return cls.model_construct(sentences=service.tokenize(request))

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return ClassifyRequest.model_json_schema(*args, **kwargs)


class Prediction(BaseModel):
    label: str = Field(description="one of the model's labels (GET /info lists them; CoLA: acceptable or unacceptable)")
    probabilities: dict[str, float] = Field(description="probability of each of the model's labels")
    model_version: str
    tokens: int = Field(description="tokens the model read, [CLS] and [SEP] included")
    truncated: bool = Field(description="the sentence was cut to the model's max length (only with truncate=true)")


class ClassifyResponse(BaseModel):
    model: str = Field(description="model tag, NAME:VERSION (bertpack-cola:VERSION for CoLA)")
    predictions: list[Prediction]


def _envelope(answer: Any) -> Any:
    """The batch answers each request with its list of predictions; the client gets them with the model's tag."""
    if isinstance(answer, list):
        return {"model": bentoml.get_current_service().tag, "predictions": answer}
    return answer


# One request's answer: BentoML splits the batch's predictions per request and validates each part into this. The
# declared media type spares BentoML working it out from the JSON schema, which it would do for every response.
ClassifyAnswer = Annotated[ClassifyResponse, BeforeValidator(_envelope), ContentType("application/json")]


def token_errors(
    too_long: list[tuple[int, int]], unreadable: list[int], limit: int, truncate: bool
) -> ValidationError | None:
    """The sentences refused after tokenization, as one ValidationError (None when there is none): with no readable
    text, or over the model's token limit when the request does not ask to truncate."""
    details = [{"type": "no_tokens", "loc": ("sentences", i), "msg": NO_TOKENS} for i in unreadable]
    if not truncate:
        details += [
            {"type": "too_many_tokens", "loc": ("sentences", i), "msg": TOO_MANY_TOKENS.format(n=n, limit=limit)}
            for i, n in too_long
            if i not in unreadable
        ]
    if not details:
        return None
    details.sort(key=lambda d: d["loc"][1])
    return ValidationError.from_exception_data(
        "ClassifyRequest",
        [InitErrorDetails(type=PydanticCustomError(d["type"], d["msg"]), loc=d["loc"], input=None) for d in details],
    )


# -- 400 bodies ------------------------------------------------------------------------------
# Every 400 (BentoML's typed validation, rewritten by the service's middleware, and the service's own
# token checks) has the same shape: {"error": every problem with its fix, "errors": [one line per
# problem], "detail": [pydantic-style {"type", "loc", "msg"}]}.

FIELDS = {"/classify": ("sentences", "truncate")}
EXAMPLE = {"/classify": '{"sentences": ["The cat sat on the mat."]}'}
# BentoML's batcher sheds a request when its queue wait plus the batch's estimated run time reaches the bound.
OVERLOADED = (
    "server overloaded: the request could not be answered within {seconds:g} s (batching queue wait plus estimated "
    "run time); "
    "retry later, or add replicas/workers"
)


TOO_LARGE = (
    "request body of {got} is over the {limit} bytes a request may hold; send at most "
    f"{MAX_SENTENCES} sentences of at most {MAX_CHARS} characters per request, and split larger jobs into several "
    "requests"
)
TOO_MANY = (
    "too many requests in flight at once: retry after a moment, or add replicas/workers "
    "(the server takes {limit} at a time)"
)
TIMED_OUT = (
    "the request was not answered within {seconds:g} s (the server's request timeout): send the whole body at once "
    "(a body sent slowly holds a slot), or retry"
)


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
    if top == "sentences" and len(loc) == 1:
        if kind == "list_type":
            return f"sentences: must be a list of strings; send {example}"
        if kind == "too_short":
            return f"sentences: the list is empty; send 1 to {MAX_SENTENCES} sentences"
        if kind == "too_long":
            return (
                f"sentences: send 1 to {MAX_SENTENCES} sentences per request{_got(msg)}; split the list over "
                "several requests"
            )
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
        lines = [
            f"body: not valid JSON ({why}); send the JSON as UTF-8 without a byte order mark, such as "
            f"{EXAMPLE.get(route, '{}')}"
        ]
    error = lines[0] if len(lines) == 1 else f"{len(lines)} problems: " + " | ".join(lines)
    return {"error": error, "errors": lines, "detail": detail}


NO_TOKENS = (
    "sentence has no text the tokenizer can read (only emoji or symbols the vocabulary lacks, invisible characters, "
    "or words over 100 characters); send words"
)
TOO_MANY_TOKENS = 'sentence has {n} tokens, over the model\'s limit of {limit}; shorten it or send "truncate": true'
