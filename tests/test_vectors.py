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


INTENT_HASHES = load_vectors("intent_hashes.json")["cases"]


def _commit_body(raw_operations: str) -> str:
    return '{"type":"commit","correlationId":"c_1","operations":' + raw_operations + "}"


@pytest.mark.parametrize("case", INTENT_HASHES, ids=[c["name"] for c in INTENT_HASHES])
def test_intent_hash_vector(case: dict[str, Any]) -> None:
    """The fallback intent hash (no intentHash sent) agrees with the reference's, both parsers."""
    from pydantic import ValidationError

    from connector.wire.bodies import (
        CommitRequest,
        parse_source_request,
        parse_source_request_fast,
    )
    from connector.wire.strict_json import loads

    body = _commit_body(case["raw"])
    fast = parse_source_request_fast(body)
    if not case["accepted"]:
        assert fast is None
        with pytest.raises(ValidationError):
            parse_source_request(loads(body))
        return
    slow = parse_source_request(loads(body))
    assert isinstance(slow, CommitRequest) and slow.intent_hash is None
    assert slow.effective_intent_hash == case["intentHash"]
    if "\\ud800" in case["raw"]:
        assert fast is None  # pydantic-core holds no lone surrogate: the slow path reads it
    else:
        assert isinstance(fast, CommitRequest)
        assert fast.effective_intent_hash == case["intentHash"]


def test_intent_hash_vectors_cover_claim_ids() -> None:
    with_claim = [c for c in INTENT_HASHES if '"claimId":"' in c["raw"] and c["accepted"]]
    without = [c for c in INTENT_HASHES if "claimId" not in c["raw"] and c["accepted"]]
    assert with_claim and without
    assert {c["accepted"] for c in INTENT_HASHES} == {True, False}
