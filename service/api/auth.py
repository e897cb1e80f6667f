"""Optional bearer-token auth (``SPATIAL_DROPOUT_API_TOKENS``), checked before any body is read.

Writes (every method but GET, HEAD and OPTIONS) need a token; reads too with
``SPATIAL_DROPOUT_AUTH_READS``. Probes, /metrics and the API document stay open, so
orchestrators and scrapers need no secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any, Final

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.problems import error_document, error_media_type, error_response, is_v2
from service.errors import Forbidden, ServiceError, Unauthorized

OPEN_PATHS: Final = frozenset(
    {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)
OPEN_PREFIXES: Final = ("/v2/health/", "/docs/assets/")
READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
REALM: Final = 'Bearer realm="spatial-dropout"'


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class TokenCheck:
    """Whether an ``Authorization`` value carries one of the configured bearer tokens; HTTP
    and gRPC (its ``authorization`` metadata) ask the same question of the same object."""

    def __init__(self, tokens: Sequence[str]) -> None:
        # Compared as SHA-256 digests: equal lengths, so compare_digest leaks not even that.
        self._digests = tuple(hashlib.sha256(token.encode()).digest() for token in tokens)

    def check(self, header: bytes | None) -> tuple[ServiceError, str] | None:
        """None when the header is a known bearer token, else the error and its challenge."""
        if header is None:
            return Unauthorized(), REALM
        scheme, _, token = header.strip().partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            detail = "The Authorization header must read `Bearer <token>`."
            return Unauthorized(detail), f'{REALM}, error="invalid_request"'
        if not self._known(token):
            return Forbidden(), f'{REALM}, error="invalid_token"'
        return None

    def _known(self, token: bytes) -> bool:
        digest = hashlib.sha256(token).digest()
        found = False
        for known in self._digests:  # every token, every time: no early exit on a match
            found |= hmac.compare_digest(digest, known)
        return found


class BearerAuth:
    """Refuse unauthenticated requests: 401 without a usable header, 403 with a wrong token."""

    def __init__(self, app: ASGIApp, tokens: Sequence[str], reads: bool) -> None:
        self.app = app
        self.reads = reads
        self._tokens = TokenCheck(tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._guarded(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        failure = self._tokens.check(_authorization(scope["headers"]))
        if failure is None:
            await self.app(scope, receive, send)
            return
        error, challenge = failure
        response = error_response(scope["path"], error, headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)

    def _guarded(self, method: str, path: str) -> bool:
        if method in READ_METHODS and not self.reads:
            return False
        return not is_open(path)


def _authorization(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for key, value in headers:
        if key == b"authorization":
            return value
    return None


def document(doc: dict[str, Any]) -> None:
    """Say in the OpenAPI document that operations other than the open ones may need a token."""
    schemes = doc.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "Only when the server sets SPATIAL_DROPOUT_API_TOKENS: then writes need "
        "a token, and reads too with SPATIAL_DROPOUT_AUTH_READS.",
    }
    for path, item in doc.get("paths", {}).items():
        if is_open(path):
            continue
        for operation in item.values():
            operation["security"] = [{"bearer": []}, {}]  # {}: no token, when none is set
            responses = operation.setdefault("responses", {})
            for error in (Unauthorized(), Forbidden()):
                responses.setdefault(str(error.status), _documented(path, error))


def _documented(path: str, error: ServiceError) -> dict[str, Any]:
    schema = "V2Error" if is_v2(path) else "Problem"
    example = error_document(path, error.status, error.code, error.title, error.detail)
    return {
        "description": error.title + " (only when the server requires tokens)",
        "content": {
            error_media_type(path): {
                "schema": {"$ref": f"#/components/schemas/{schema}"},
                "example": example,
            }
        },
    }
