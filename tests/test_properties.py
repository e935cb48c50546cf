"""Property tests: arbitrary input only ever produces the documented errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector import (
    DataSource,
    Dispatcher,
    ProtocolError,
    RequestContext,
    SignatureError,
    Verifier,
    sign_request,
    verify_request,
)
from connector.wire.frames import (
    RequestFrame,
    ResponseFrame,
    decode_frame,
    encode_frame,
    encode_response,
)
from tests.helpers import API_KEY, dispatch_frame

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=30,
)
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["register", "ready", "request", "response", "error", "x"])},
    optional={
        "id": json_values,
        "protocolVersion": json_values,
        "method": st.sampled_from(["POST", "GET"]) | json_values,
        "url": json_values,
        "headers": st.dictionaries(st.text(), st.text()) | json_values,
        "body": st.text() | json_values,
        "status": json_values,
        "code": json_values,
        "message": json_values,
        "environment": st.text(),
    },
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=512))
def test_decode_frame_bytes(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_frame(raw)


@SETTINGS
@given(st.text(max_size=512))
def test_decode_frame_text(raw: str) -> None:
    with contextlib.suppress(ProtocolError):
        decode_frame(raw)


@SETTINGS
@given(frame_like)
def test_decode_frame_json_shapes(value: dict[str, Any]) -> None:
    try:
        frame = decode_frame(json.dumps(value))
    except ProtocolError as error:
        if error.request_id is not None:
            assert value["type"] == "request" and value["id"] == error.request_id
        return
    assert decode_frame(encode_frame(frame)) == frame


header_values = st.text(max_size=80) | st.sampled_from(
    ["v1,", "v1,AAAA", "  ", "1767225600", "1e9"]
)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(
            ["webhook-id", "Webhook-Timestamp", "webhook-timestamp", "WEBHOOK-SIGNATURE", "x"]
        ),
        header_values,
    ),
    st.text(max_size=200),
    st.lists(st.text(max_size=20), max_size=3) | st.text(max_size=20),
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**20), 10**20) | st.none(),
)
def test_verify_request_raises_only_signature_errors(
    headers: dict[str, str], body: str, keys: Any, now: Any
) -> None:
    try:
        verify_request(headers, body, keys, now=now if now is None or abs(now) < 1e15 else None)
    except SignatureError as error:
        assert error.code.startswith("source_")


@SETTINGS
@given(st.text(max_size=40), st.text(max_size=200), st.integers(0, 2**33))
def test_sign_then_verify_round_trips(message_id: str, body: str, timestamp: int) -> None:
    message_id = message_id.strip() or "m"
    headers = sign_request(API_KEY, message_id, body, timestamp)
    verified = verify_request(headers, body, API_KEY, now=timestamp)
    assert verified.message_id == message_id
    assert verified.signed_at == timestamp


any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)


@SETTINGS
@given(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40),
    any_text.map(lambda t: t.strip() or "m"),
    any_text,
    st.integers(-(10**10), 2**34),
)
def test_verifier_agrees_with_the_standardwebhooks_signer(
    key: str, message_id: str, body: str, timestamp: int
) -> None:
    # sign_request signs with the standardwebhooks package; the verifier
    # computes the HMAC itself. Lone surrogates included.
    headers = sign_request(key, message_id, body, timestamp)
    verifier = Verifier(key, tolerance=10**12)
    assert verifier.verify(headers, body, now=timestamp).signed_at == timestamp
    with contextlib.suppress(SignatureError):
        verifier.verify(headers, body + "x", now=timestamp)
        raise AssertionError("a changed body verified")


class Echo(DataSource):
    async def load(self, model: str, id: str, ctx: RequestContext) -> dict[str, Any]:
        return {"id": id}


@settings(max_examples=200, deadline=None)
@given(
    body=st.one_of(
        json_values.map(json.dumps),
        st.text(max_size=100),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["load", "list", "commit", "events"])},
            optional={
                "model": json_values,
                "id": json_values,
                "query": json_values,
                "operations": json_values,
                "correlationId": json_values,
                "cursor": json_values,
                "limit": json_values,
                "scope": json_values,
            },
        ).map(json.dumps),
    ),
    signed=st.booleans(),
)
def test_dispatch_always_answers_with_a_documented_status(body: str, signed: bool) -> None:
    headers = sign_request(API_KEY, "msg_prop", body) if signed else {}
    frame = RequestFrame(id="req_prop", method="POST", url="u", headers=headers, body=body)
    dispatcher = Dispatcher(Echo(), Verifier(API_KEY), replay_memory=0)
    response = asyncio.run(dispatch_frame(dispatcher, frame))
    sent = decode_frame(encode_response(frame.id, response.status, response.body))
    assert isinstance(sent, ResponseFrame) and sent.id == "req_prop"
    assert response.status in {200, 400, 401, 404}
    payload = json.loads(response.body)
    if response.status != 200:
        assert isinstance(payload["error"], str) and payload["error"]
    if not signed:
        assert response.status == 401


timestamps = (
    st.integers(0, 10**6).map(str)
    | st.integers(10**17, 10**30).map(str)
    | st.integers(20, 6000).map(lambda n: "9" * n)  # int() refuses beyond 4,300 digits
    | st.from_regex(r"[+-]?[0-9]{0,400}(\.[0-9]{0,40})?([eE][+-]?[0-9]{1,6})?", fullmatch=True)
    | st.text(max_size=30)
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["webhook-id", "WEBHOOK-ID", "webhook-signature", "x-other"])
        | st.text(max_size=20),
        st.text(max_size=60),
        max_size=5,
    ),
    timestamps,
    st.booleans(),
)
def test_dispatch_answers_whatever_the_headers(
    headers: dict[str, str], timestamp: str, sign: bool
) -> None:
    """The headers are fuzzed too: verification never raises, every request gets an answer."""
    body = json.dumps({"type": "load", "model": "m", "id": "1"})
    if sign:
        headers = {**headers, **sign_request(API_KEY, "msg_h", body)}
    headers["webhook-timestamp"] = timestamp
    dispatcher = Dispatcher(Echo(), Verifier(API_KEY), replay_memory=0)
    answer = asyncio.run(dispatcher.dispatch("POST", headers, body, request_id="r"))
    assert answer.status in {200, 401}
    if answer.status == 401:
        assert json.loads(answer.body)["error"].startswith("source_")


def test_a_five_thousand_digit_timestamp_is_invalid_not_an_exception() -> None:
    body = "{}"
    headers = {**sign_request(API_KEY, "msg_long", body), "webhook-timestamp": "9" * 5000}
    try:
        verify_request(headers, body, API_KEY)
    except SignatureError as error:
        assert error.code == "source_timestamp_invalid"
    else:
        raise AssertionError("accepted a 5,000-digit timestamp")
