"""The HTTP contract of the service: request limits and the typed request/response models.

The limits live in the API's type annotations, so BentoML validates every request (and answers
400 with a JSON body) before the request reaches the service code, let alone a shared batch.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, StrictStr, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

# Documented limits (README, section serve). CoLA sentences are under 250 characters; 1000 leaves
# room for real text while bounding the work one request can ask for.
MAX_SENTENCES = 64  # per request
MAX_CHARS = 1000  # per sentence, before tokenization
# Token ids accepted by the internal batched endpoint (the model's own limit is applied there too).
MAX_TOKEN_ID = 2**31 - 1
MAX_IDS = 512


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
TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]], Field(min_length=1, max_length=MAX_IDS)]
EncodedBatch = Annotated[list[TokenIds], Field(min_length=1)]


class Prediction(BaseModel):
    label: str = Field(description="acceptable or unacceptable")
    probabilities: dict[str, float] = Field(description="probability of each label")
    model_version: str
    tokens: int = Field(description="tokens the model read, [CLS] and [SEP] included")
    truncated: bool = Field(description="the sentence was cut to the model's max length (only with truncate=true)")


class ClassifyResponse(BaseModel):
    model: str = Field(description="model tag, bertpack-cola:<version>")
    predictions: list[Prediction]


def too_long_error(too_long: list[tuple[int, str, int]], limit: int) -> ValidationError:
    """The same 400 body BentoML gives for typed-validation failures, for sentences whose token
    count (known only after tokenization) is over the model's limit."""
    details = [InitErrorDetails(type=PydanticCustomError(
        "too_many_tokens", "sentence has {tokens} tokens, over the model's limit of {limit}; shorten it or send \"truncate\": true",
        {"tokens": n, "limit": limit}), loc=("sentences", i), input=text) for i, text, n in too_long]
    return ValidationError.from_exception_data("Input", details)


def no_tokens_error(indexes: list[int]) -> ValidationError:
    details = [InitErrorDetails(type=PydanticCustomError("no_tokens", "sentence has no text the tokenizer can read"),
                                loc=("sentences", i), input="") for i in indexes]
    return ValidationError.from_exception_data("Input", details)
