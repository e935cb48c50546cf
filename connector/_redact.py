"""Secrets out of URLs, however malformed the URL is.

A database or lock URL may carry a password in its userinfo
(``postgresql://app:secret@db/app``) or in its query (``?password=secret``,
even spelled ``?%70assword=``). Parsers disagree on malformed URLs: a
password holding ``?``, ``#`` or ``/`` ends the authority for
:mod:`urllib.parse`, not for SQLAlchemy; a raw ``@`` in a password makes
them take the rest of it for the host. So this module reads URLs the
widest way any parser might: the userinfo is everything up to the ``@``
(the last one, if several), and any query parameter whose decoded name says
"pass" is a secret. :func:`url_secrets` lists what to blank from any text,
:func:`redact_url` blanks it in the URL itself, and :func:`unescaped_at`
finds the URLs that no parser reads the same way, to refuse them.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import parse_qsl, unquote, unquote_plus

__all__ = ["REDACTED", "has_password", "redact_url", "unescaped_at", "url_secrets"]

REDACTED: Final = "[redacted]"

# scheme://userinfo@ — greedy up to the last "@", so a password with an
# unescaped "@", "?", "#" or "/" is still wholly inside the userinfo.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>.*)@")


def _query(url: str) -> str:
    """The query as the widest reading has it: after the first ``?`` past the userinfo."""
    match = _USERINFO.match(url)
    rest = url[match.end() :] if match else url
    _, _, query = rest.partition("?")
    return query.partition("#")[0]


def _is_secret_name(name: str) -> bool:
    return "pass" in name.lower()


def url_secrets(url: str) -> list[str]:
    """The secret parts of ``url``, as they appear in it and decoded."""
    found: list[str] = []
    match = _USERINFO.match(url)
    if match:
        _, sep, password = match.group("userinfo").partition(":")
        if sep and password:
            found.append(password)
            # A reader that stops at the first "@" (SQLAlchemy) sees less of it.
            found.extend(part for part in password.split("@") if len(part) >= 3)
    query = _query(url)
    for raw in query.split("&"):
        name, sep, value = raw.partition("=")
        if sep and value and _is_secret_name(unquote_plus(name)):
            found.append(value)
    found.extend(
        value for name, value in parse_qsl(query, keep_blank_values=True) if _is_secret_name(name)
    )
    return sorted(
        {variant for secret in found for variant in (secret, unquote(secret)) if variant},
        key=len,
        reverse=True,
    )


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``[redacted]``."""
    for secret in url_secrets(url):
        url = url.replace(secret, REDACTED)
    return url


def has_password(url: str) -> bool:
    """Whether ``url`` carries a password (in its userinfo or its query)."""
    return bool(url_secrets(url))


def unescaped_at(url: str) -> bool:
    """Whether the URL holds more than one raw ``@``: parsers then disagree on
    where the password ends, and print the rest of it as the host."""
    return url.count("@") > 1
