"""ClickHouse's error model: exception codes, their names, the ``Code: N. DB::Exception`` text and HTTP status.

Both the engine (wrapping chDB's own exceptions) and the HTTP layer (refusing a request) raise the same error, so it
lives below both of them; the HTTP layer only renders it.
"""

from __future__ import annotations

import re

# ClickHouse's exception-code -> HTTP status mapping (the subset that matters to clients).
_HTTP_STATUS_BY_CODE = {
    194: 401,  # REQUIRED_PASSWORD
    516: 401,  # AUTHENTICATION_FAILED
    164: 403,  # READONLY
    497: 403,  # ACCESS_DENIED
    48: 501,  # NOT_IMPLEMENTED
    **dict.fromkeys((6, 26, 27, 36, 38, 41, 42, 43, 53, 62, 72, 117, 271), 400),
    **dict.fromkeys((46, 47, 50, 56, 60, 73, 81, 115), 404),
}
_CODE_NAMES = {
    36: "BAD_ARGUMENTS",
    48: "NOT_IMPLEMENTED",
    62: "SYNTAX_ERROR",
    271: "CANNOT_DECOMPRESS",
    372: "SESSION_NOT_FOUND",
    373: "SESSION_IS_LOCKED",
    516: "AUTHENTICATION_FAILED",
    1001: "STD_EXCEPTION",
}
_CODE_RE = re.compile(r"Code: (\d+)\.")


class ClickHouseError(Exception):
    """An error reported to the client the way ClickHouse reports it."""

    def __init__(self, code: int, message: str, status: int | None = None) -> None:
        if not message.startswith("Code: "):
            name = _CODE_NAMES.get(code)
            message = f"Code: {code}. DB::Exception: {message}" + (f" ({name})" if name else "")
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _HTTP_STATUS_BY_CODE.get(code, 500)

    @classmethod
    def from_engine(cls, exc: BaseException) -> ClickHouseError:
        """Wrap a chDB exception, keeping ClickHouse's own code and text."""
        text = str(exc)
        start = text.find("Code: ")
        if start >= 0:
            text = text[start:].strip()
            match = _CODE_RE.match(text)
            if match:
                return cls(int(match.group(1)), text)
        return cls(1001, f"{type(exc).__name__}: {text}")
