"""Secrets out of URLs, however malformed the URL is.

A database or lock URL may carry a password in its userinfo
(``postgresql://app:secret@db/app``, even with an unescaped ``@`` inside it)
or in its query (``?password=secret``). :func:`redact_url` blanks both
without parsing the URL strictly, so a URL too broken to parse is still
safe to show; :func:`url_secrets` lists what to blank from any text.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote

__all__ = ["REDACTED", "has_password", "redact_url", "unescaped_at", "url_secrets"]

REDACTED: Final = "[redacted]"

# scheme://userinfo@ — greedy up to the last "@" before the path, so a
# password with an unescaped "@" is still wholly inside the userinfo.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#]*)@")
_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:password|passwd|pass|sslpassword)=)([^&#]*)")


def url_secrets(url: str) -> list[str]:
    """The secret parts of ``url`` as they appear in it, and unquoted."""
    found: list[str] = []
    match = _USERINFO.match(url)
    if match:
        _, sep, password = match.group("userinfo").partition(":")
        if sep and password:
            found.append(password)
    found.extend(m.group(2) for m in _QUERY_PASSWORD.finditer(url) if m.group(2))
    return [variant for secret in found for variant in {secret, unquote(secret)} if variant]


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``[redacted]``."""
    match = _USERINFO.match(url)
    if match:
        user, sep, password = match.group("userinfo").partition(":")
        if sep and password:
            url = f"{match.group('scheme')}{user}:{REDACTED}@{url[match.end() :]}"
    return _QUERY_PASSWORD.sub(lambda m: m.group(1) + REDACTED, url)


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (in its userinfo or its query)."""
    return bool(url_secrets(url))


def unescaped_at(url: str) -> bool:
    """Whether the userinfo holds a raw ``@``: parsers then split the password
    at it and show the rest as the host, in errors and logs."""
    match = _USERINFO.match(url)
    return match is not None and "@" in match.group("userinfo")
