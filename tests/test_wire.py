"""The wire: frames, constants, URL helpers and the sans-I/O session, beyond the reference vectors."""

from __future__ import annotations

import json

import pytest

from connector import (
    AuthenticationFailed,
    ConnectionLost,
    HandshakeRejected,
    ProtocolError,
    ProtocolMismatch,
    RateLimited,
    Superseded,
)
from connector.wire import frames
from connector.wire.frames import (
    ErrorFrame,
    ReadyFrame,
    RegisterFrame,
    RequestFrame,
    ResponseFrame,
    decode_frame,
    encode_frame,
    subprotocols_for,
    websocket_url,
)
from connector.wire.session import (
    CLIENT_NAME,
    ClientSession,
    Ended,
    EngineError,
    Ignored,
    Invalid,
    Ready,
    Request,
    closed,
    rejection,
)


def test_constants() -> None:
    assert frames.PROTOCOL_VERSION == 1
    assert frames.LISTEN_PATH == "/v1/source/listen"
    assert frames.SUBPROTOCOL == "ablo.source.v1"
    assert frames.BEARER_PREFIX == "ablo.bearer."


def test_subprotocols_offer_the_protocol_then_the_bearer_key() -> None:
    assert subprotocols_for("sk_test_abc") == ["ablo.source.v1", "ablo.bearer.sk_test_abc"]


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("https://api.abloatai.com", "wss://api.abloatai.com/v1/source/listen"),
        ("https://api.abloatai.com/", "wss://api.abloatai.com/v1/source/listen"),
        ("http://127.0.0.1:8787//", "ws://127.0.0.1:8787/v1/source/listen"),
        ("wss://edge.example/prefix", "wss://edge.example/prefix/v1/source/listen"),
        ("ws://localhost:1", "ws://localhost:1/v1/source/listen"),
    ],
)
def test_websocket_url(base: str, url: str) -> None:
    assert websocket_url(base) == url


def test_default_url() -> None:
    assert websocket_url() == "wss://api.abloatai.com/v1/source/listen"


def test_encode_leaves_out_absent_optional_fields_and_is_compact() -> None:
    assert encode_frame(RegisterFrame()) == '{"type":"register","protocolVersion":1}'
    assert (
        encode_frame(RegisterFrame(client="ablo-connector-python/0.1.0"))
        == '{"type":"register","protocolVersion":1,"client":"ablo-connector-python/0.1.0"}'
    )
    assert (
        encode_frame(ResponseFrame(id="r", status=200, body="{}"))
        == '{"type":"response","id":"r","status":200,"body":"{}"}'
    )
    assert (
        encode_frame(ErrorFrame(code="c", message="m"))
        == '{"type":"error","code":"c","message":"m"}'
    )


def test_round_trip_of_every_frame_type() -> None:
    frames = [
        RegisterFrame(client="x"),
        ReadyFrame(protocol_version=1, source_id="s", organization_id="o", environment="sandbox"),
        RequestFrame(id="1", method="POST", url="u", headers={"a": "b"}, body="é🚀"),
        ResponseFrame(id="1", status=201, headers={"content-type": "application/json"}, body=""),
        ErrorFrame(id="1", code="c", message=""),
    ]
    for frame in frames:
        assert decode_frame(encode_frame(frame)) == frame


def test_binary_frames_are_utf8_with_the_bom_dropped() -> None:
    raw = '{"type":"ready","protocolVersion":1,"sourceId":"é"}'
    assert decode_frame(b"\xef\xbb\xbf" + raw.encode()) == decode_frame(raw)
    frame = decode_frame(b'{"type":"error","code":"c","message":"\xff"}')
    assert isinstance(frame, ErrorFrame) and frame.message == "\ufffd"


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"register","protocolVersion":NaN}',
        '{"type":"register","protocolVersion":1,"x":Infinity}',
        '{"type":"register","protocolVersion":9007199254740992}',
        '{"type":"register","protocolVersion":true}',
        '{"type":"register","protocolVersion":"1"}',
        '{"type":"register","protocolVersion":1,"client":null}',
        '{"type":"ready","protocolVersion":1,"sourceId":null}',
        '{"type":"response","id":"r","status":200,"headers":null,"body":""}',
        '{"type":"error","id":null,"code":"c","message":""}',
        '{"type":"ready","protocolVersion":1,"environment":"-bad"}',
        '{"type":"ready","protocolVersion":1,"environment":"' + "a" * 41 + '"}',
        "\ufeff{}",
        "[" * 100_000,
    ],
)
def test_rejections(raw: str) -> None:
    with pytest.raises(ProtocolError):
        decode_frame(raw)


def test_safe_integer_bound_is_accepted() -> None:
    frame = decode_frame('{"type":"register","protocolVersion":9007199254740991}')
    assert isinstance(frame, RegisterFrame) and frame.protocol_version == 2**53 - 1


def test_duplicate_keys_last_wins() -> None:
    frame = decode_frame('{"type":"error","code":"a","code":"b","message":""}')
    assert isinstance(frame, ErrorFrame) and frame.code == "b"


def test_an_invalid_request_with_a_usable_id_names_it() -> None:
    raw = json.dumps(
        {"type": "request", "id": "req_9", "method": "GET", "url": "u", "headers": {}, "body": ""}
    )
    with pytest.raises(ProtocolError) as caught:
        decode_frame(raw)
    assert caught.value.request_id == "req_9"
    assert "method" in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"request","id":"","method":"GET"}',
        '{"type":"request","id":7}',
        '{"type":"response","id":"r1","status":"x","body":""}',
        "not json",
    ],
)
def test_no_request_id_when_there_is_no_usable_one(raw: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_frame(raw)
    assert caught.value.request_id is None


def test_error_message_does_not_echo_values() -> None:
    secret = "sk_live_do_not_echo_me"
    with pytest.raises(ProtocolError) as caught:
        decode_frame(json.dumps({"type": "request", "id": "r", "method": secret}))
    assert secret not in str(caught.value)


def test_the_hot_path_response_encoder_matches_the_model() -> None:
    from connector.wire.frames import encode_response

    for request_id, status, body in [("r1", 200, '{"row":null}'), ('é"\\', 504, "ü🚀\n\u2028")]:
        assert encode_response(request_id, status, body).decode() == encode_frame(
            ResponseFrame(id=request_id, status=status, body=body)
        )


def test_a_lone_surrogate_id_is_not_offered_for_an_error_answer() -> None:
    raw = '{"type":"request","id":"r\\ud800","method":"GET","url":"u","headers":{},"body":""}'
    with pytest.raises(ProtocolError) as caught:
        decode_frame(raw)
    assert caught.value.request_id is None


# ---------------------------------------------------------------- session


def _ready(version: int = 1, **fields: str) -> str:
    return json.dumps({"type": "ready", "protocolVersion": version, **fields})


def test_session_registers_and_becomes_ready_once() -> None:
    session = ClientSession(max_message_size=1024)
    assert json.loads(session.register_text()) == {
        "type": "register",
        "protocolVersion": 1,
        "client": CLIENT_NAME,
    }
    assert session.accept("ablo.source.v1", "wss://x") is None
    event = session.receive(_ready(sourceId="src_1"))
    assert isinstance(event, Ready) and event.frame.source_id == "src_1"
    assert session.ready is event.frame
    assert isinstance(session.receive(_ready()), Ignored)


def test_session_ends_when_the_server_does_not_speak_the_protocol() -> None:
    session = ClientSession(max_message_size=1024)
    ended = session.accept(None, "wss://x/v1/source/listen")
    assert isinstance(ended, Ended) and isinstance(ended.failure, ConnectionLost)
    assert (ended.close_code, ended.close_reason) == (1002, "subprotocol_required")
    mismatch = session.receive(_ready(version=2))
    assert isinstance(mismatch, Ended) and isinstance(mismatch.failure, ProtocolMismatch)
    assert (mismatch.close_code, mismatch.close_reason) == (1002, "protocol_version_mismatch")
    timed_out = session.ready_timed_out(10)
    assert (timed_out.close_code, timed_out.close_reason) == (1002, "ready_timeout")


def test_session_errors_before_and_after_ready() -> None:
    refused = ClientSession(max_message_size=1024).receive(
        json.dumps(
            {"type": "error", "code": "source_connector_no_source_registered", "message": ""}
        )
    )
    assert isinstance(refused, Ended) and (refused.close_code, refused.close_reason) == (
        1000,
        "registration_refused",
    )
    assert "source_connector_no_source_registered" in str(refused.failure)
    superseded = json.dumps({"type": "error", "code": "source_connector_superseded", "message": ""})
    early = ClientSession(max_message_size=1024).receive(superseded)
    assert isinstance(early, Ended) and isinstance(early.failure, Superseded)

    session = ClientSession(max_message_size=1024)
    session.receive(_ready())
    late = session.receive(superseded, ready_for=42.0)
    assert isinstance(late, Ended) and isinstance(late.failure, Superseded)
    assert late.close_code is None and late.failure.ready_for == 42.0
    notice = session.receive(json.dumps({"type": "error", "code": "noise", "message": "m"}))
    assert notice == EngineError("noise", "m")
    failed = session.receive(json.dumps({"type": "error", "id": "r1", "code": "c", "message": ""}))
    assert failed == EngineError("c", "", "r1")


def test_session_serves_requests_even_before_ready() -> None:
    session = ClientSession(max_message_size=1024)
    raw = json.dumps(
        {"type": "request", "id": "r1", "method": "POST", "url": "u", "headers": {}, "body": "{}"}
    )
    event = session.receive(raw)
    assert isinstance(event, Request) and event.frame.id == "r1"


def test_a_request_without_a_method_is_refused_by_its_id() -> None:
    # The engine's frame schema requires method: "POST"; there is no default.
    raw = json.dumps({"type": "request", "id": "r9", "url": "u", "headers": {}, "body": "{}"})
    event = ClientSession(max_message_size=1024).receive(raw)
    assert isinstance(event, Invalid) and event.reason == "invalid_request"
    assert event.request_id == "r9" and "method" in event.detail


def test_every_frame_decode_accepts_encodes_again_even_with_lone_surrogates() -> None:
    raw = (
        '{"type":"request","id":"r1","method":"POST","url":"u",'
        '"headers":{"x-note":"\\ud800"},"body":"{\\"id\\":\\"\\udfff\\"}"}'
    )
    frame = decode_frame(raw)
    text = encode_frame(frame)
    assert decode_frame(text) == frame
    assert "\\ud800" in text and "\\udfff" in text  # written as JavaScript writes them


def test_session_refuses_bad_frames_and_names_the_request_to_fail() -> None:
    session = ClientSession(max_message_size=1024)
    assert session.receive("{nope") == Invalid("malformed", "frame is not valid JSON")
    bad_method = session.receive(
        json.dumps(
            {"type": "request", "id": "r2", "method": "GET", "url": "u", "headers": {}, "body": ""}
        )
    )
    assert isinstance(bad_method, Invalid) and bad_method.reason == "invalid_request"
    assert bad_method.request_id == "r2"
    huge = json.dumps(
        {"type": "request", "id": "r3", "url": "u", "headers": {}, "body": "x" * 2000}
    )
    oversize = session.receive(huge)
    assert isinstance(oversize, Invalid) and oversize.reason == "oversize"
    assert oversize.request_id == "r3" and oversize.message is not None
    assert (
        f"request frame of {len(huge)} bytes exceeds the connector's 1024-byte limit"
        == oversize.message
    )
    error = json.loads(session.error_text("r3", oversize.message))
    assert error == {
        "type": "error",
        "id": "r3",
        "code": ProtocolError.code,
        "message": oversize.message,
    }


def test_rejections_and_closes_are_classified_from_plain_values() -> None:
    auth = rejection(401, {}, b'{"error":"source_connector_unauthenticated"}')
    assert (
        isinstance(auth, AuthenticationFailed) and auth.code == "source_connector_unauthenticated"
    )
    limited = rejection(429, {"Retry-After": " 12 "}, None)
    assert isinstance(limited, RateLimited) and limited.retry_after == 12.0
    assert rejection(429, {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, b"").retry_after is None  # type: ignore[attr-defined]
    other = rejection(502, {}, b"<html>bad gateway</html>")
    assert type(other) is HandshakeRejected and other.code == "http_502"
    assert isinstance(closed(4000, "source_connector_superseded", ready_for=3.0), Superseded)
    assert "half-open" in str(closed(1011, "keepalive ping timeout", ready_for=0.0))
    dropped = closed(None, "", ready_for=7.0)
    assert isinstance(dropped, ConnectionLost) and dropped.ready_for == 7.0
    assert "code 1001 (going away)" in str(closed(1001, "going away", ready_for=0.0))


def test_the_intent_hash_takes_a_lone_surrogate_as_javascript_writes_it() -> None:
    from connector.wire.bodies import Operation, canonical_json, operations_intent_hash

    # What JSON.stringify({a: "x\ud800y", b: "é"}) prints in the engine's runtime.
    assert canonical_json({"b": "é", "a": "x\ud800y"}) == '{"a":"x\\ud800y","b":"é"}'
    operation = Operation.model_validate(
        {"type": "CREATE", "model": "task", "id": "t1", "input": {"title": "\ud800"}}
    )
    assert len(operations_intent_hash([operation])) == 64
