"""POST /v1/detect and /v1/detect/batch: hazard suggestions (疑似隐患) for uploaded photos.

Parameters ``conf``, ``sector`` and ``model`` (a version to pin) may come as form fields or as query
parameters; a form field wins. ``?annotated=true`` or ``Accept: image/jpeg`` answers the evidence
image (boxes and Chinese labels drawn) instead of JSON. ``?tiles=true`` runs sliced inference
(models/tiling.py) for wide, high-resolution photos whose small objects vanish at the model's size.

Beside the model's ``detections``, the JSON answer lists ``findings`` derived by the rules of
configs/rules.yaml (hazardlens.rules), e.g. a worker whose head has no helmet. The rules read every
active-class detection (a confined-space helmet rule needs ``person``, a general class), and their
findings are then filtered by the rules' own sectors and by ``conf``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.common import SECTOR_SCHEMA
from hazardlens.contracts.detections import detections_public, rule_findings_public
from hazardlens.detector import Detector, DetectResult, detection_taxonomy, relevant
from hazardlens.errors import HazardError, Invalid
from hazardlens.rules import default_rules
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.runtime import MAX_BATCH_FILES, ModelsDep, read_upload
from hazardlens.serving.schemas import BatchResponse, DetectResponse, errors
from hazardlens.taxonomy import Taxonomy

router = APIRouter(tags=["detection"])

#: Long side of the decode kept for drawing an evidence image (legible labels, modest JPEG size).
EVIDENCE_SIDE = 1600

Conf = Annotated[float | None, Form(ge=0.0, le=1.0, description="confidence threshold (default 0.25)")]
ConfQ = Annotated[float | None, Query(alias="conf", ge=0.0, le=1.0, include_in_schema=False)]
Sector = Annotated[
    str | None,
    Form(
        max_length=40,
        description="only classes relevant to this sector",
        json_schema_extra={**SECTOR_SCHEMA, "x-hazardlens-enum-extra": [""]},
    ),
]
SectorQ = Annotated[str | None, Query(alias="sector", max_length=40, include_in_schema=False)]
Version = Annotated[
    str | None,
    Form(
        max_length=40,
        pattern=r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,39})?$",
        description="pin a model version (default: production)",
    ),
]
VersionQ = Annotated[str | None, Query(alias="model", max_length=40, include_in_schema=False)]
DetectCaller = Annotated[Principal, Depends(require("detect"))]


def _wants_image(request: Request, annotated: bool) -> bool:
    if annotated:
        return True
    accept = request.headers.get("accept", "")
    return "image/jpeg" in accept and not accept.lstrip().startswith(("application/json", "*/*"))


def _findings(ctx: Context, tax: Taxonomy, result: DetectResult, sector: str | None, conf: float) -> list[Any]:
    """Rule findings over every active-class detection. A rule may only call a class missing if the
    model that answered can see it (the result names its classes; if it does not, no absence is claimed)."""
    everything = relevant(tax, result.detections, None)
    found = default_rules(ctx).apply(
        everything, sector, conf, image_size=result.image_size, model_classes=list(result.classes or ())
    )
    return rule_findings_public(found, everything)


def _body(ctx: Context, result: DetectResult, sector: str | None, conf: float, started: float) -> dict[str, Any]:
    tax = detection_taxonomy(ctx)
    dets = relevant(tax, result.detections, sector)
    return {
        "model": result.model,
        "image": {"width": result.image_size[0], "height": result.image_size[1]},
        "detections": detections_public(tax, dets),
        "findings": _findings(ctx, tax, result, sector, conf),
        "timing_ms": {**result.timing_ms, "total": round((time.perf_counter() - started) * 1000, 2)},
    }


def _check_sector(ctx: Context, sector: str | None) -> str | None:
    sector = (sector or "").strip() or None
    if sector is not None:
        detection_taxonomy(ctx).active_classes(sector)  # Invalid (unknown_sector) before any work is done
    return sector


@router.post(
    "/v1/detect",
    summary="Suggest hazards on one photo",
    response_model=DetectResponse,
    responses={
        200: {
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
            "description": "detections (JSON), or the evidence image when asked for",
        },
        **errors(401, 403, 404, 408, 409, 413, 415, 422, 503, 504),
    },
)
def detect(
    request: Request,
    _: DetectCaller,
    ctx: CtxDep,
    models: ModelsDep,
    file: Annotated[UploadFile, File(description="JPEG, PNG, WebP or HEIC photo", json_schema_extra={"minLength": 1})],
    conf: Conf = None,
    sector: Sector = None,
    model: Version = None,
    conf_q: ConfQ = None,
    sector_q: SectorQ = None,
    model_q: VersionQ = None,
    annotated: Annotated[bool, Query(description="answer the evidence image (image/jpeg)")] = False,
    tiles: Annotated[
        bool,
        Query(
            description="sliced inference for photos much larger than the model's "
            "training frames (wide phone shots): overlapping windows of "
            "HAZARDLENS_TILE_WINDOW pixels plus the whole photo"
        ),
    ] = False,
) -> Any:
    started = time.perf_counter()
    sector = _check_sector(ctx, sector if sector is not None else sector_q)
    threshold = conf if conf is not None else conf_q
    threshold = 0.25 if threshold is None else threshold
    image = _wants_image(request, annotated)
    result = models.detect(
        read_upload(ctx, file),
        version=model or model_q or None,
        conf=threshold,
        max_pixels=ctx.settings.max_pixels,
        timeout=ctx.settings.request_timeout_s,
        keep_image_side=EVIDENCE_SIDE if image else None,
        tiles=(ctx.settings.tile_window, ctx.settings.tile_overlap) if tiles else None,
    )
    if image:
        from hazardlens.models.annotate import render_evidence

        tax = detection_taxonomy(ctx)
        dets = relevant(tax, result.detections, sector)
        assert result.image is not None
        jpeg = render_evidence(result.image, dets, result.image_scale, tax)
        return Response(
            jpeg,
            media_type="image/jpeg",
            headers={
                "X-Model-Version": f"{result.model['name']}:{result.model['version']}",
                "X-Detections": str(len(dets)),
            },
        )
    return _body(ctx, result, sector, threshold, started)


def _batch(
    models: Detector,
    ctx: Context,
    files: list[UploadFile],
    threshold: float | None,
    sector: str | None,
    version: str | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    threshold = 0.25 if threshold is None else threshold
    payloads: list[bytes | HazardError] = []
    for f in files:
        try:
            payloads.append(read_upload(ctx, f))
        except HazardError as exc:  # one oversized file does not sink the other fifteen
            payloads.append(exc)
    model, answers = models.detect_many(
        [p for p in payloads if isinstance(p, bytes)],
        version=version,
        conf=threshold,
        max_pixels=ctx.settings.max_pixels,
        timeout=ctx.settings.request_timeout_s,
    )
    pending = iter(answers)
    results: list[dict[str, Any]] = []
    failures: list[HazardError] = []
    for index, (f, payload) in enumerate(zip(files, payloads, strict=True)):
        item: dict[str, Any] = {"index": index, "filename": f.filename}
        outcome = payload if isinstance(payload, HazardError) else next(pending)
        if isinstance(outcome, HazardError):
            failures.append(outcome)
            item["error"] = {"code": outcome.code, "message": outcome.message}
        else:
            body = _body(ctx, outcome, sector, threshold, started)
            item.update(
                {
                    "image": body["image"],
                    "detections": body["detections"],
                    "findings": body["findings"],
                    "timing_ms": outcome.timing_ms,
                }
            )
        results.append(item)
    if failures and len(failures) == len(payloads):
        # Nothing in the batch was an image: the caller's request is wrong, answered as the single-photo
        # route would answer its first file (a batch with at least one image answers 200, per file).
        raise failures[0]
    total = round((time.perf_counter() - started) * 1000, 2)
    return {"model": model, "results": results, "timing_ms": {"total": total}}


@router.post(
    "/v1/detect/batch",
    summary=f"Suggest hazards on up to {MAX_BATCH_FILES} photos",
    response_model=BatchResponse,
    responses=errors(401, 403, 404, 408, 409, 413, 415, 422, 503, 504),
)
def detect_batch(
    _: DetectCaller,
    ctx: CtxDep,
    models: ModelsDep,
    files: Annotated[
        list[UploadFile],
        File(description=f"1-{MAX_BATCH_FILES} photos", json_schema_extra={"minItems": 1, "maxItems": MAX_BATCH_FILES}),
    ],
    conf: Conf = None,
    sector: Sector = None,
    model: Version = None,
    conf_q: ConfQ = None,
    sector_q: SectorQ = None,
    model_q: VersionQ = None,
) -> Any:
    if not files:
        raise Invalid("send at least one file", code="no_files")
    if len(files) > MAX_BATCH_FILES:
        raise Invalid(f"{len(files)} files; a batch takes at most {MAX_BATCH_FILES}", code="too_many_files")
    sector = _check_sector(ctx, sector if sector is not None else sector_q)
    return _batch(models, ctx, files, conf if conf is not None else conf_q, sector, model or model_q or None)
