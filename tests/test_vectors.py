"""The engine's own reference vectors, in full: our code must agree byte for byte."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from connector import ProtocolError, SignatureError, sign_request, verify_request
from connector.wire.frames import decode_frame, encode_frame
from tests.conftest import load_vectors

FRAMES = load_vectors("frames.json")["frames"]
SIGNATURES = load_vectors("signatures.json")


def _raw(case: dict[str, Any]) -> str | bytes:
    if "rawBase64" in case:
        return base64.b64decode(case["rawBase64"])
    raw: str = case["raw"]
    return raw


@pytest.mark.parametrize("case", FRAMES, ids=[c["name"] for c in FRAMES])
def test_frame_vector(case: dict[str, Any]) -> None:
    if case["accepted"]:
        frame = decode_frame(_raw(case))
        assert json.loads(encode_frame(frame)) == case["frame"]
    else:
        with pytest.raises(ProtocolError) as caught:
            decode_frame(_raw(case))
        assert caught.value.code == "source_connector_protocol_error"
        if case["reason"] == "invalid_json":
            assert "not valid JSON" in str(caught.value)


def test_every_frame_vector_is_covered() -> None:
    assert len(FRAMES) >= 40
    assert {c["accepted"] for c in FRAMES} == {True, False}


@pytest.mark.parametrize("case", SIGNATURES["sign"], ids=[c["name"] for c in SIGNATURES["sign"]])
def test_sign_vector(case: dict[str, Any]) -> None:
    headers = sign_request(case["apiKey"], case["messageId"], case["body"], case["timestamp"])
    assert headers == {
        "webhook-id": case["messageId"],
        "webhook-timestamp": str(case["timestamp"]),
        "webhook-signature": case["signatureHeader"],
    }
    verified = verify_request(headers, case["body"], case["apiKey"], now=case["timestamp"])
    assert (verified.message_id, verified.signed_at) == (case["messageId"], case["timestamp"])


@pytest.mark.parametrize(
    "case", SIGNATURES["verify"], ids=[c["name"] for c in SIGNATURES["verify"]]
)
def test_verify_vector(case: dict[str, Any]) -> None:
    assert "expectedThrow" not in case, "a vector we do not know how to read"
    if case["expectedError"] is None:
        verified = verify_request(
            case["headers"], case["body"], case["apiKey"], now=case["nowSeconds"]
        )
        assert verified.message_id == case["expectedMessageId"]
        assert verified.signed_at == case["expectedSignedAt"]
    else:
        with pytest.raises(SignatureError) as caught:
            verify_request(case["headers"], case["body"], case["apiKey"], now=case["nowSeconds"])
        assert caught.value.code == case["expectedError"]


def test_verify_tolerance_matches_the_vectors() -> None:
    assert SIGNATURES["toleranceSeconds"] == 300
