"""Model-assisted pre-labelling: suggestions on samples or on the caller's queue, library-wide
pre-labelling as a sharded job (``POST /v1/prelabel``), and the Label
Studio ML backend protocol under ``/labelstudio`` (configure ``http://HOST:8000/labelstudio`` as the
ML backend URL in Label Studio, with basic auth whose password is a hazardlens API key), and its
webhook ``/labelstudio/webhook`` (annotations saved in Label Studio come back as submitted revisions)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends

from hazardlens.auth import Principal
from hazardlens.contracts.annotations import Suggestions
from hazardlens.contracts.jobs import JobPublic, PrelabelJobParams
from hazardlens.contracts.labelstudio import (
    LsHealth,
    LsLabelConfig,
    LsPredictions,
    LsPredictRequest,
    LsSetup,
    LsSetupRequest,
    LsWebhook,
    LsWebhookAnswer,
    SuggestRequest,
)
from hazardlens.detector import detection_taxonomy
from hazardlens.jobs import JobRunner, job_public
from hazardlens.labeling.ml_backend import parse_label_config, predict_tasks, receive_webhook
from hazardlens.labeling.queues import my_queue
from hazardlens.labeling.suggestions import suggest_for_samples
from hazardlens.serving.deps import CtxDep, require
from hazardlens.serving.routes.jobs import get_runner
from hazardlens.serving.runtime import ModelsDep
from hazardlens.serving.schemas import errors

router = APIRouter(tags=["labeling"])
Caller = Annotated[Principal, Depends(require("suggestions:request"))]


@router.post(
    "/v1/suggestions/request",
    response_model=Suggestions,
    summary="Ask the model for suggestions on samples or on my queue",
    responses=errors(401, 403, 404, 413, 415, 422, 503, 504),
)
def suggest(body: SuggestRequest, ctx: CtxDep, caller: Caller, models: ModelsDep) -> Suggestions:
    ids = list(body.sample_ids)
    if body.queue:
        with ctx.db.session() as session:
            ids += [item["sample_id"] for item in my_queue(session, caller, limit=body.limit)]
    items = suggest_for_samples(ctx, caller, ids, models, conf=body.conf, version=body.model)
    return Suggestions.model_validate({"items": items})


@router.post(
    "/v1/prelabel",
    status_code=202,
    response_model=JobPublic,
    summary="Pre-label every sample of my organisation that matches the filters (a sharded job)",
    description="Queues a `prelabel` job (the same as `POST /v1/jobs` with that kind): the matching samples "
    "are cut into shards of a few hundred that the workers run in parallel; each sample gets one open "
    "suggestion from the chosen model version (production by default). Poll `GET /v1/jobs/{id}`: progress "
    "is summed over the shards, the result counts samples, suggestions, boxes and failures with reasons.",
    responses=errors(401, 403, 404, 409, 413, 422, 503),
)
def prelabel(
    caller: Caller,
    runner: Annotated[JobRunner, Depends(get_runner)],
    body: Annotated[
        PrelabelJobParams,
        Body(
            openapi_examples={
                "unlabelled": {
                    "summary": "unlabelled samples of one sector, production model",
                    "value": {"filters": {"sector": "dust", "status": "unlabeled"}},
                }
            }
        ),
    ],
) -> JobPublic:
    return job_public(runner.submit("prelabel", body, caller))


@router.get(
    "/labelstudio/health", response_model=LsHealth, summary="Label Studio ML backend: health", responses=errors(503)
)
def ls_health(models: ModelsDep) -> LsHealth:
    loaded = models.loaded()
    return LsHealth(status="UP", model_class="hazardlens", model_version=loaded[0]["version"] if loaded else None)


@router.post(
    "/labelstudio/setup",
    response_model=LsSetup,
    summary="Label Studio ML backend: setup",
    responses=errors(401, 403, 413, 422, 503),
)
def ls_setup(body: LsSetupRequest, ctx: CtxDep, __: Caller, models: ModelsDep) -> LsSetup:
    config = parse_label_config(body.schema_, detection_taxonomy(ctx)) if body.schema_ else None
    with models.get(None) as lease:  # loads the production model if this worker has not yet
        return LsSetup(
            model_version=lease.info["version"],
            label_config=LsLabelConfig.model_validate(config.public()) if config is not None else None,
        )


@router.post(
    "/labelstudio/predict",
    response_model=LsPredictions,
    response_model_exclude_unset=True,
    summary="Label Studio ML backend: pre-annotations for tasks",
    responses=errors(401, 403, 404, 413, 415, 422, 503, 504),
)
def ls_predict(body: LsPredictRequest, ctx: CtxDep, caller: Caller, models: ModelsDep) -> LsPredictions:
    tasks = [task.model_dump() for task in body.tasks]
    return LsPredictions.model_validate(predict_tasks(ctx, caller, tasks, models, label_config=body.label_config))


Writer = Annotated[Principal, Depends(require("annotations:write"))]


@router.post(
    "/labelstudio/webhook",
    response_model=LsWebhookAnswer,
    summary="Label Studio webhook: annotations saved there become submitted revisions",
    description="Register this URL as a webhook of the Label Studio project (with the header "
    "Authorization: Bearer <hazardlens API key>; the key's user authors the revisions). "
    "ANNOTATION_CREATED and ANNOTATION_UPDATED store the annotation's rectangles as a "
    "submitted revision of the task's sample (data.sample_id, or its image URL); other "
    "events are acknowledged and ignored.",
    responses=errors(401, 403, 404, 413, 422),
)
def ls_webhook(body: LsWebhook, ctx: CtxDep, caller: Writer) -> LsWebhookAnswer:
    outcome = receive_webhook(ctx, caller, body.model_dump(by_alias=True))
    return LsWebhookAnswer.model_validate(outcome.as_dict())
