"""Response shapes of the detection, inspection and model APIs. The shapes themselves live in the
contract layer (:mod:`hazardlens.contracts.detections`, :mod:`hazardlens.contracts.common`) and are
re-exported here so existing imports keep working; :func:`errors` stays with the routes."""

from __future__ import annotations

from typing import Any

from hazardlens.contracts.common import ErrorBody, ErrorResponse
from hazardlens.contracts.detections import (
    BatchItem,
    BatchResponse,
    Box,
    DerivedFinding,
    Detection,
    DetectResponse,
    Finding,
    ImageSize,
    InspectionPhoto,
    InspectionResponse,
    ModelRef,
    PhotoResponse,
    ReviewResponse,
    RevisionRef,
    RuleInput,
    Timing,
)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the error statuses a route can answer, all in the one shape."""
    text = {
        400: "bad request",
        401: "missing or invalid API key",
        403: "the key's role may not do this",
        404: "not found (or not visible to the caller's organisation)",
        408: "request body stalled",
        409: "conflict with the current state",
        413: "file, body or image too large",
        415: "not a supported image",
        422: "invalid request",
        503: "no model loaded",
        504: "timed out",
    }
    return {s: {"model": ErrorResponse, "description": text.get(s, "error")} for s in statuses}


# ModelsResponse moved to the contract layer: hazardlens.contracts.models.ModelsResponse.

__all__ = [
    "BatchItem",
    "BatchResponse",
    "Box",
    "DerivedFinding",
    "DetectResponse",
    "Detection",
    "ErrorBody",
    "ErrorResponse",
    "Finding",
    "ImageSize",
    "InspectionPhoto",
    "InspectionResponse",
    "ModelRef",
    "PhotoResponse",
    "ReviewResponse",
    "RevisionRef",
    "RuleInput",
    "Timing",
    "errors",
]
