"""The HTTP edge of the service, an ASGI middleware in front of BentoML's app: every answer is JSON that names the
fix, and request bodies are bounded before they are parsed."""

from __future__ import annotations

import json
import logging

from starlette.responses import JSONResponse

from serving.schema import FIELDS, MAX_BODY_BYTES, OVERLOADED, TIMED_OUT, TOO_LARGE, TOO_MANY, error_body

log = logging.getLogger("bertpack.service")

# nginx's code for "client closed the request": logged and counted for a client that hung up mid-body, not a 500.
CLIENT_GONE = 499


def client_error(body: dict, status: int = 400, path: str = "/classify") -> JSONResponse:
    """A client mistake answered by bertpack itself (not by BentoML's validation): logged like those, one WARNING
    line."""
    log.warning("POST %s: client error, %d (%s)", path, status, body["error"][:200])
    return JSONResponse(body, status_code=status)


ENDPOINTS = [
    "POST /classify",
    "GET /info",
    "GET /healthz",
    "GET /livez",
    "GET /readyz",
    "GET /metrics",
    "GET /docs.json (OpenAPI)",
    "GET / (Swagger UI)",
]


class BodyTooLarge(Exception):
    """Raised into the app's read of a body that grows past MAX_BODY_BYTES (sent without a Content-Length)."""


KNOWN_PATHS = frozenset(endpoint.split()[1] for endpoint in ENDPOINTS)  # the metrics labels allowed


class JsonOnly:
    """ASGI middleware, so that every answer is JSON and names the fix:
    - a body over MAX_BODY_BYTES is answered 413 before it is read (by its Content-Length) or as soon as it grows
      past the bound (sent without one);
    - a form or multipart body is answered 415 (BentoML would parse it, and a malformed multipart body
      escapes its error handling as a 500); BentoML's own 415 (pickle) gets the same JSON;
    - BentoML's 429 (too many requests in flight) and 504 (request timeout) name the fix (bentoml_compat puts this
      middleware in front of them); 429 and 503 carry Retry-After;
    - a client that hangs up before its whole body arrived is logged and counted as 499, not as BentoML's 500;
    - BentoML's plain-text 404 and 405 become JSON naming the endpoints;
    - a 400 from BentoML's typed validation ({"error": "2 validation error for Input", "detail": [...]})
      becomes one line per problem with its fix (serving.schema.error_body);
    - a 503 from the batching queue says the server is overloaded instead of "unexpected error"."""

    def __init__(self, app, max_concurrency: int, timeout_s: int, max_latency_ms: int) -> None:
        self.app = app
        self.max_concurrency, self.timeout_s, self.max_latency_ms = max_concurrency, timeout_s, max_latency_ms

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope.get("method", ""), scope.get("path", "")
        headers = {key.lower(): value for key, value in scope.get("headers", ())}
        ctype = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower().decode("latin-1")
        length = headers.get(b"content-length", b"").strip()
        if method == "POST" and ctype.startswith(self.FORM_TYPES):
            await client_error({"error": self.UNSUPPORTED.format(ctype)}, 415, path)(scope, receive, send)
            return
        if length.isdigit() and int(length) > MAX_BODY_BYTES:  # refused before a byte of it is read
            await client_error(
                {"error": TOO_LARGE.format(got=f"{int(length)} bytes", limit=MAX_BODY_BYTES)}, 413, path
            )(scope, receive, send)
            return
        too_large = {
            "error": TOO_LARGE.format(got=f"over {MAX_BODY_BYTES} bytes", limit=MAX_BODY_BYTES)
        }  # a body with no length
        # head: the body's first bytes, to name a BOM or UTF-16; gone: the client hung up before its whole body arrived
        received = {"bytes": 0, "over": False, "gone": False, "head": b""}

        async def limited() -> dict:  # a body sent without a Content-Length (chunked) is counted as it arrives
            message = await receive()
            if message["type"] == "http.disconnect":
                received["gone"] = True
            elif message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if len(received["head"]) < 4:
                    received["head"] = (received["head"] + message.get("body", b""))[:4]
                if received["bytes"] > MAX_BODY_BYTES:
                    received["over"] = True
                    raise BodyTooLarge(f"over {MAX_BODY_BYTES} bytes")
            return message

        held: dict = {}

        async def rewrite(message) -> None:
            if message["type"] == "http.response.start":
                if (
                    received["gone"] and message["status"] >= 500
                ):  # nobody reads it; the metrics and the log should not say 500
                    message = {**message, "status": CLIENT_GONE}
                if received[
                    "over"
                ]:  # the app failed reading the body (BentoML answers that 500): it is the client's 413
                    message = {**message, "status": 413}
                if received["over"] or self._rewrites(
                    message["status"], dict(message.get("headers", ())).get(b"content-type", b""), path
                ):
                    held["start"], held["body"] = message, b""
                    return
            elif message["type"] == "http.response.body" and "start" in held:
                held["body"] += message.get("body", b"")
                if message.get("more_body", False):
                    return
                start = held.pop("start")
                raw = held.pop("body")
                if received["over"]:
                    body = too_large
                elif start["status"] == 415:
                    body = {"error": self.UNSUPPORTED.format(ctype)}
                else:
                    body = self._body(start["status"], method, path, raw, start.get("headers", ()), received["head"])
                data = json.dumps(body, ensure_ascii=False).encode("utf-8")
                headers = [
                    (k, v)
                    for k, v in start.get("headers", ())
                    if k.lower() not in (b"content-length", b"content-type", b"retry-after")
                ]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
                if start["status"] in (429, 503):  # overloaded: the client should back off briefly (BentoML sends none)
                    headers.append((b"retry-after", b"1"))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": data, "more_body": False})
                return
            await send(message)

        try:
            await self.app(scope, limited, rewrite)
        except BodyTooLarge:  # it went through the app unanswered
            await client_error(too_large, 413, path)(scope, receive, send)

    FORM_TYPES = ("multipart/", "application/x-www-form-urlencoded")
    UNSUPPORTED = "unsupported Content-Type {!r}: send a JSON body with Content-Type: application/json"

    @staticmethod
    def _rewrites(status: int, ctype: bytes, path: str) -> bool:
        if status in (404, 405):
            return ctype.startswith(b"text/plain")
        if status in (415, 429, 504):  # BentoML's pickle refusal, max_concurrency and timeout answers
            return True
        return status in (400, 503) and path in FIELDS and ctype.startswith(b"application/json")

    def _body(self, status: int, method: str, path: str, raw: bytes, headers, head: bytes = b"") -> dict:
        if status == 404:
            return {
                "error": f"no endpoint {method} {path}; the endpoints are {', '.join(ENDPOINTS)}",
                "endpoints": ENDPOINTS,
            }
        if status == 405:
            # Starlette's Allow header comes from a set (order varies between runs) and adds HEAD to every GET route.
            methods = {m.strip() for m in dict(headers).get(b"allow", b"").decode("latin-1").split(",") if m.strip()}
            allowed = ", ".join(sorted(methods - {"HEAD"} if "GET" in methods else methods)) or "another method"
            return {
                "error": f"{method} is not allowed on {path}; use {allowed}"
                + (" with a JSON body" if "POST" in allowed else ""),
                "endpoints": ENDPOINTS,
            }
        if status == 429:
            return {"error": TOO_MANY.format(limit=self.max_concurrency)}
        if status == 504:
            return {"error": TIMED_OUT.format(seconds=self.timeout_s)}
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if status == 503:
            return {"error": OVERLOADED.format(seconds=self.max_latency_ms / 1000)}
        if isinstance(body, dict) and isinstance(body.get("detail"), list) and "errors" not in body:
            return error_body(body["detail"], path, head)
        return body if isinstance(body, dict) else {"error": str(body)}
