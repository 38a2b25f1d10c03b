"""Model-assisted pre-labelling: suggestions on samples or on the caller's queue, and the Label
Studio ML backend protocol under ``/labelstudio`` (configure ``http://HOST:8000/labelstudio`` as the
ML backend URL in Label Studio, with basic auth whose password is a hazardlens API key)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from hazardlens.auth import Principal
from hazardlens.detections import Detections
from hazardlens.labeling.ml_backend import predict_tasks
from hazardlens.labeling.queues import my_queue
from hazardlens.labeling.suggestions import suggest_for_samples
from hazardlens.models.manager import ModelManager, relevant
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.runtime import ModelsDep

router = APIRouter(tags=["labeling"])
Caller = Annotated[Principal, Depends(require("suggestions:request"))]


class SuggestRequest(BaseModel):
    sample_ids: list[int] = Field(default_factory=list, max_length=100, description="samples to pre-label")
    queue: bool = Field(False, description="pre-label the open samples of my queue instead")
    limit: int = Field(20, ge=1, le=100)
    conf: float = Field(0.25, ge=0.0, le=1.0)
    model: str | None = Field(None, max_length=40, description="pin a model version (default: production)")


def _predictor(ctx: CtxDep, models: ModelManager, conf: float,
               version: str | None) -> Callable[[bytes], tuple[str, tuple[int, int], Detections]]:
    def predict(data: bytes) -> tuple[str, tuple[int, int], Detections]:
        result = models.detect(data, version=version, conf=conf, max_pixels=ctx.settings.max_pixels)
        return result.model["version"], result.image_size, relevant(ctx.base_taxonomy, result.detections)

    return predict


@router.post("/v1/suggestions/request", summary="Ask the model for suggestions on samples or on my queue")
def suggest(body: SuggestRequest, ctx: CtxDep, caller: Caller, models: ModelsDep) -> dict[str, Any]:
    ids = list(body.sample_ids)
    if body.queue:
        with ctx.db.session() as session:
            ids += [item["sample_id"] for item in my_queue(session, caller, limit=body.limit)]
    predict = _predictor(ctx, models, body.conf, body.model)

    def version_and_boxes(data: bytes) -> tuple[str, Detections]:
        version, _, detections = predict(data)
        return version, detections

    return {"items": suggest_for_samples(ctx, caller, ids, version_and_boxes)}


@router.get("/labelstudio/health", summary="Label Studio ML backend: health")
def ls_health(models: ModelsDep) -> dict[str, Any]:
    loaded = models.loaded()
    return {"status": "UP", "model_class": "hazardlens", "model_version": loaded[0]["version"] if loaded else None}


class SetupRequest(BaseModel):
    project: str | int | None = None
    schema_: str | None = Field(None, alias="schema")
    model_version: str | None = None


@router.post("/labelstudio/setup", summary="Label Studio ML backend: setup")
def ls_setup(_: SetupRequest, __: Caller, models: ModelsDep) -> dict[str, Any]:
    with models.get(None) as lease:  # loads the production model if this worker has not yet
        return {"model_version": lease.info["version"]}


class PredictRequest(BaseModel):
    tasks: list[dict[str, Any]] = Field(..., max_length=64)
    label_config: str | None = None
    params: dict[str, Any] | None = None
    project: str | int | None = None
    model_version: str | None = None


@router.post("/labelstudio/predict", summary="Label Studio ML backend: pre-annotations for tasks")
def ls_predict(body: PredictRequest, ctx: CtxDep, caller: Caller, models: ModelsDep) -> dict[str, Any]:
    return predict_tasks(ctx, caller, body.tasks, _predictor(ctx, models, 0.25, None))
