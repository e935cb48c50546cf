"""Frames, constants and URL helpers beyond the reference vectors."""

from __future__ import annotations

import json

import pytest

from connector import protocol
from connector.protocol import (
    ErrorFrame,
    ProtocolError,
    ReadyFrame,
    RegisterFrame,
    RequestFrame,
    ResponseFrame,
    decode_frame,
    encode_frame,
    subprotocols_for,
    websocket_url,
)


def test_constants() -> None:
    assert protocol.PROTOCOL_VERSION == 1
    assert protocol.LISTEN_PATH == "/v1/source/listen"
    assert protocol.SUBPROTOCOL == "ablo.source.v1"
    assert protocol.BEARER_PREFIX == "ablo.bearer."


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
        RequestFrame(id="1", url="u", headers={"a": "b"}, body="é🚀"),
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
    from connector.protocol import encode_response

    for request_id, status, body in [("r1", 200, '{"row":null}'), ('é"\\', 504, "ü🚀\n\u2028")]:
        assert encode_response(request_id, status, body) == encode_frame(
            ResponseFrame(id=request_id, status=status, body=body)
        )


def test_a_lone_surrogate_id_is_not_offered_for_an_error_answer() -> None:
    raw = '{"type":"request","id":"r\\ud800","method":"GET","url":"u","headers":{},"body":""}'
    with pytest.raises(ProtocolError) as caught:
        decode_frame(raw)
    assert caught.value.request_id is None
