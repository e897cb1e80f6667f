"""Content negotiation: which media type a request carries, and which one its answer may take."""

from __future__ import annotations

from collections.abc import Sequence

from service.errors import NotAcceptable, UnsupportedMediaType


def media_type(content_type: str | None) -> str | None:
    """The bare, lower-case media type of a Content-Type header (parameters dropped)."""
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def require_media_type(content_type: str | None, supported: Sequence[str]) -> str:
    """The request's media type if it is one of ``supported``; else 415."""
    found = media_type(content_type)
    if found not in supported:
        raise UnsupportedMediaType(content_type, supported)
    assert found is not None
    return found


def check_acceptable(accept: str | None, offered: str) -> None:
    """Raise 406 unless the Accept header admits ``offered`` (absent or ``*/*`` admits all)."""
    if accept is None or not accept.strip():
        return
    if _quality(accept, offered) <= 0:
        raise NotAcceptable(accept, [offered])


def _quality(accept: str, offered: str) -> float:
    """The q of the most specific media range matching ``offered`` (RFC 9110, 12.5.1)."""
    main = offered.partition("/")[0]
    best_specificity, best_q = -1, 0.0
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";")]
        rng = parts[0].lower()
        q = 1.0
        for param in parts[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        r_main, _, r_sub = rng.partition("/")
        if rng == offered:
            specificity = 2
        elif r_main == main and r_sub == "*":
            specificity = 1
        elif rng in {"*/*", "*"}:
            specificity = 0
        else:
            continue
        if specificity > best_specificity:
            best_specificity, best_q = specificity, q
    return best_q
