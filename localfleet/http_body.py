"""The one way the local fleet's HTTP stand-ins read a request's length: a Content-Length that is
not a number from 0 to the limit would block the handler (negative, or more than was sent) or
exhaust memory (huge), so it is refused before anything is read."""

from __future__ import annotations

from email.message import Message


def content_length(headers: Message, limit: int) -> tuple[int | None, int]:
    """(bytes to read, or None when refused; the HTTP status to refuse with: 400 or 413)."""
    text = (headers.get("Content-Length") or "0").strip()
    if not text.isdigit():
        return None, 400
    length = int(text)
    return (length, 200) if length <= limit else (None, 413)
