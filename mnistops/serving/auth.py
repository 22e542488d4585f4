"""Key auth: ``Authorization: Bearer <key>``, compared in constant time."""

from __future__ import annotations

import hmac
from typing import Optional


class KeyAuth:
    def __init__(self, key: Optional[str], enabled: bool):
        self.enabled = enabled
        self._key = key.encode() if key else b""

    def allows(self, header: Optional[bytes]) -> bool:
        """``header``: the raw Authorization header value, or None."""
        if not self.enabled:
            return True
        if not header or not self._key:
            return False
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(token.strip(), self._key)

    def __repr__(self) -> str:  # never show the key
        return f"KeyAuth(enabled={self.enabled})"
