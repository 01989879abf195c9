"""Bearer-token check for the internal API (``ESS_INTERNAL_TOKEN``).

The token is compared in constant time (:func:`hmac.compare_digest` on
bytes: the ``str`` form refuses non-ASCII input, which a client controls).
"""

from __future__ import annotations

import hmac

_SCHEME = "bearer"


def bearer_token_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``Bearer <token>``.

    The scheme is case-insensitive (RFC 7235); the token is not.
    """
    if authorization is None:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != _SCHEME:
        return False
    return hmac.compare_digest(
        credentials.strip().encode("utf-8", errors="replace"), token.encode("utf-8")
    )
