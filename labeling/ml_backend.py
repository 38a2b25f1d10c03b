"""Label Studio ML backend protocol (``GET /health``, ``POST /setup``, ``POST /predict``), so teams
that already label in Label Studio can use our model for pre-annotations.

Images are resolved without leaving the installation (nothing is fetched from the network): a task
may reference a library sample (``data.sample_id``, or an image URL ending in
``/v1/samples/<id>/image`` as our Label Studio export writes them when given that prefix), or carry
the image inline as a ``data:`` URI. Like ``request_suggestions``, inference is a
:class:`hazardlens.detector.Detector` (serving hands in its model manager), so labeling does not import
the model part, and the boxes hold the classes every detection answer holds
(:func:`hazardlens.detector.detect_relevant`).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from sqlalchemy.orm import Session

from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.datasets.library import get_sample
from hazardlens.detector import DEFAULT_CONF, Detector, detect_relevant
from hazardlens.errors import Invalid
from hazardlens.formats import labelstudio_results
from hazardlens.store import blob_key

MAX_TASKS = 64
_SAMPLE_URL = re.compile(r"/v1/samples/(\d+)/image(?:\?.*)?$")


def _image_bytes(ctx: Context, session: Session, principal: Principal, task: dict[str, Any],
                 image_key: str) -> bytes:
    data = task.get("data") or {}
    if not isinstance(data, dict):
        raise Invalid("task 'data' must be an object", code="invalid_task")
    sample_id = data.get("sample_id")
    ref = data.get(image_key)
    if sample_id is None and isinstance(ref, str):
        match = _SAMPLE_URL.search(ref)
        if match:
            sample_id = int(match.group(1))
        elif ref.startswith("data:") and "," in ref:
            try:
                return base64.b64decode(ref.split(",", 1)[1], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise Invalid("the task's data: URI is not valid base64", code="invalid_task") from exc
    if sample_id is None:
        raise Invalid(f"task {task.get('id')}: give data.sample_id, a /v1/samples/<id>/image URL or a data: URI "
                      "(this backend never fetches images from the network)", code="unresolvable_image")
    try:
        sample = get_sample(session, principal, int(sample_id))
    except (TypeError, ValueError) as exc:
        raise Invalid(f"task {task.get('id')}: sample_id must be a number", code="invalid_task") from exc
    return ctx.store.get(blob_key(sample.sha256))


def predict_tasks(ctx: Context, principal: Principal, tasks: list[dict[str, Any]],
                  detector: Detector, *, conf: float = DEFAULT_CONF, version: str | None = None,
                  from_name: str = "label", to_name: str = "image", image_key: str = "image") -> dict[str, Any]:
    """Answer Label Studio's /predict: one prediction (results in percent coordinates) per task.

    Images are resolved in one short catalogue session; inference runs after it, holding no lock."""
    principal.require("suggestions:request")
    if not isinstance(tasks, list) or not tasks:
        raise Invalid("'tasks' must be a non-empty list", code="invalid_request")
    if len(tasks) > MAX_TASKS:
        raise Invalid(f"at most {MAX_TASKS} tasks per request", code="invalid_request")
    if not all(isinstance(task, dict) for task in tasks):
        raise Invalid("each task must be an object", code="invalid_task")
    with ctx.db.session() as session:
        images = [_image_bytes(ctx, session, principal, task, image_key) for task in tasks]
    results = []
    for data in images:
        result = detect_relevant(ctx, detector, data, conf=conf, version=version)
        detections, (width, height) = result.detections, result.image_size
        boxes = detections.to_boxes()
        items, _ = labelstudio_results(boxes, width, height, from_name, to_name, "p")
        score = float(detections.confidence.mean()) if detections.confidence is not None and len(boxes) else 0.0
        results.append({"result": items, "score": score, "model_version": result.version})
    return {"results": results}
