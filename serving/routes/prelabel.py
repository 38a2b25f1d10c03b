"""Model-assisted pre-labelling: suggestions on samples or on the caller's queue, and the Label
Studio ML backend protocol under ``/labelstudio`` (configure ``http://HOST:8000/labelstudio`` as the
ML backend URL in Label Studio, with basic auth whose password is a hazardlens API key)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends

from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.contracts.annotations import Suggestions
from hazardlens.contracts.labelstudio import (
    LsHealth,
    LsPredictions,
    LsPredictRequest,
    LsSetup,
    LsSetupRequest,
    SuggestRequest,
)
from hazardlens.detections import Detections
from hazardlens.labeling.ml_backend import predict_tasks
from hazardlens.labeling.queues import my_queue
from hazardlens.labeling.suggestions import suggest_for_samples
from hazardlens.models.manager import ModelManager, relevant
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.runtime import ModelsDep
from hazardlens.serving.schemas import errors

router = APIRouter(tags=["labeling"])
Caller = Annotated[Principal, Depends(require("suggestions:request"))]


def _predictor(ctx: Context, models: ModelManager, conf: float, version: str | None
               ) -> Callable[[bytes], tuple[str, tuple[int, int], Detections]]:
    def predict(data: bytes) -> tuple[str, tuple[int, int], Detections]:
        result = models.detect(data, version=version, conf=conf, max_pixels=ctx.settings.max_pixels)
        return result.model["version"], result.image_size, relevant(ctx.base_taxonomy, result.detections)

    return predict


@router.post("/v1/suggestions/request", response_model=Suggestions,
             summary="Ask the model for suggestions on samples or on my queue",
             responses=errors(401, 403, 404, 413, 415, 422, 503, 504))
def suggest(body: SuggestRequest, ctx: CtxDep, caller: Caller, models: ModelsDep) -> Suggestions:
    ids = list(body.sample_ids)
    if body.queue:
        with ctx.db.session() as session:
            ids += [item["sample_id"] for item in my_queue(session, caller, limit=body.limit)]
    predict = _predictor(ctx, models, body.conf, body.model)

    def version_and_boxes(data: bytes) -> tuple[str, Detections]:
        version, _, detections = predict(data)
        return version, detections

    return Suggestions.model_validate({"items": suggest_for_samples(ctx, caller, ids, version_and_boxes)})


@router.get("/labelstudio/health", response_model=LsHealth, summary="Label Studio ML backend: health",
            responses=errors(503))
def ls_health(models: ModelsDep) -> LsHealth:
    loaded = models.loaded()
    return LsHealth(status="UP", model_class="hazardlens", model_version=loaded[0]["version"] if loaded else None)


@router.post("/labelstudio/setup", response_model=LsSetup, summary="Label Studio ML backend: setup",
             responses=errors(401, 403, 413, 422, 503))
def ls_setup(_: LsSetupRequest, __: Caller, models: ModelsDep) -> LsSetup:
    with models.get(None) as lease:  # loads the production model if this worker has not yet
        return LsSetup(model_version=lease.info["version"])


@router.post("/labelstudio/predict", response_model=LsPredictions, response_model_exclude_unset=True,
             summary="Label Studio ML backend: pre-annotations for tasks",
             responses=errors(401, 403, 404, 413, 415, 422, 503, 504))
def ls_predict(body: LsPredictRequest, ctx: CtxDep, caller: Caller, models: ModelsDep) -> LsPredictions:
    tasks = [task.model_dump() for task in body.tasks]
    return LsPredictions.model_validate(predict_tasks(ctx, caller, tasks, _predictor(ctx, models, 0.25, None)))
