"""Websocket close reasons, kept inside the protocol's 123-byte limit.

A close frame carries at most 125 payload bytes, two of which are the code,
so a reason longer than 123 UTF-8 bytes cannot be sent at all (wsproto would
refuse it and the close would fail). Every reason this package sends goes
through :func:`close_reason`.
"""

from __future__ import annotations

#: The largest close reason, in UTF-8 bytes, that fits in a close frame.
MAX_CLOSE_REASON_BYTES = 123


def close_reason(text: str, limit: int = MAX_CLOSE_REASON_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character.

    Lone surrogates (which cannot be encoded at all) are replaced by ``?`` so
    the result is always encodable.
    """
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= limit:
        return encoded.decode("utf-8")
    ellipsis = "..."
    cut = encoded[: max(limit - len(ellipsis), 0)]
    # ``ignore`` drops the trailing partial character left by the byte cut.
    return cut.decode("utf-8", errors="ignore") + ellipsis[: max(limit - len(cut), 0)]
