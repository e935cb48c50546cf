"""Small builders shared by the tests."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from connector.protocol import RequestFrame
from connector.signing import sign_request

API_KEY = "sk_test_helpers_0123456789abcdef"
_ids = itertools.count(1)


def signed_frame(
    body: dict[str, Any] | str,
    *,
    api_key: str = API_KEY,
    message_id: str | None = None,
    timestamp: int | None = None,
    request_id: str | None = None,
) -> RequestFrame:
    text = body if isinstance(body, str) else json.dumps(body)
    n = next(_ids)
    headers = sign_request(
        api_key,
        message_id or f"msg_{n}",
        text,
        int(time.time()) if timestamp is None else timestamp,
    )
    headers["content-type"] = "application/json"
    return RequestFrame(
        id=request_id or f"req_{n}",
        url="https://source.ablo.invalid/v1/source",
        headers=headers,
        body=text,
    )
