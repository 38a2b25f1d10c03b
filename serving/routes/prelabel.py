"""Model-assisted pre-labelling: suggestions on samples or on the caller's queue, and the Label
Studio ML backend protocol under ``/labelstudio`` (configure ``http://HOST:8000/labelstudio`` as the
ML backend URL in Label Studio, with basic auth whose password is a hazardlens API key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from hazardlens.auth import Principal
from hazardlens.contracts.annotations import Suggestions
from hazardlens.contracts.labelstudio import (
    LsHealth,
    LsPredictions,
    LsPredictRequest,
    LsSetup,
    LsSetupRequest,
    SuggestRequest,
)
from hazardlens.labeling.ml_backend import predict_tasks
from hazardlens.labeling.queues import my_queue
from hazardlens.labeling.suggestions import suggest_for_samples
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.runtime import ModelsDep
from hazardlens.serving.schemas import errors

router = APIRouter(tags=["labeling"])
Caller = Annotated[Principal, Depends(require("suggestions:request"))]


@router.post("/v1/suggestions/request", response_model=Suggestions,
             summary="Ask the model for suggestions on samples or on my queue",
             responses=errors(401, 403, 404, 413, 415, 422, 503, 504))
def suggest(body: SuggestRequest, ctx: CtxDep, caller: Caller, models: ModelsDep) -> Suggestions:
    ids = list(body.sample_ids)
    if body.queue:
        with ctx.db.session() as session:
            ids += [item["sample_id"] for item in my_queue(session, caller, limit=body.limit)]
    items = suggest_for_samples(ctx, caller, ids, models, conf=body.conf, version=body.model)
    return Suggestions.model_validate({"items": items})


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
    return LsPredictions.model_validate(predict_tasks(ctx, caller, tasks, models))
