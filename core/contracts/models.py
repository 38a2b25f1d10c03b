"""The model registry: registered versions (weights, classes, card), what a worker holds, promotion."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from hazardlens.contracts.common import Contract, Public
from hazardlens.contracts.samples import Timestamp

ModelStage = Literal["candidate", "staging", "production", "archived"]
#: A model name or version as the registry stores them (also path segments of the API).
ModelName = Annotated[str, Field(min_length=1, max_length=100)]
ModelVersionText = Annotated[str, Field(min_length=1, max_length=40)]


class ModelCard(Public):
    """The card registered with the weights. The keys below are the ones hazardlens writes (training,
    ``models import``, the shipped baseline); a card may carry more (``training_data``,
    ``framework``, ``architecture``...), passed through as they are."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    version: str | None = None
    kind: str | None = Field(None, description="e.g. yolo-detect")
    classes: list[str] | None = None
    imgsz: int | None = None
    taxonomy_version: str | None = None
    dataset_version: str | None = Field(None, description="id of the dataset version it was trained on")
    metrics: dict[str, Any] | None = Field(None, description="split -> {precision, recall, map50, map50_95, ...}")
    hashes: dict[str, str | None] | None = Field(None, description="weights_sha256, config_sha256, last_sha256...")


class ModelVersionPublic(Public):
    """One registered model version."""

    id: int
    name: str
    version: str
    stage: ModelStage
    classes: list[str] = Field(description="class keys in the model's output order")
    imgsz: int = Field(description="input size the model was trained at")
    weights_sha256: str
    dataset_version: str | None = Field(description="id of the dataset version it was trained on")
    metrics: dict[str, Any] | None = Field(description="the card's metrics: split -> {precision, recall, map50, ...}")
    card: ModelCard | None
    created_at: Timestamp | None
    stage_changed_at: Timestamp | None


class LoadedModel(Public):
    """A model a serving worker holds in memory now."""

    name: str
    version: str
    stage: str
    role: str = Field(description="production, or pinned (loaded for requests that pin this version)")
    engine: str = Field(description="onnx | openvino | onnx-int8 | openvino-int8 | ultralytics")
    device: str | None
    imgsz: int
    classes: list[str]
    loaded_at: Timestamp
    load_seconds: float
    in_flight: int = Field(description="requests holding it now")
    queue_depth: int = Field(description="images waiting for the micro-batcher")
    requests: int = Field(description="requests served since loaded")
    batches_run: int
    images_run: int
    streams: int = Field(1, description="inference streams running in parallel for this model")
    refused: int = Field(0, description="requests answered 503 overloaded (queue full) since loaded")


class ModelsResponse(Public):
    """``GET /v1/models``: the registry and what the worker that answered serves."""

    models: list[ModelVersionPublic] = Field(description="every registered version, with stage and card")
    production: str | None = Field(description="version in production in the catalogue")
    loaded: list[LoadedModel] = Field(description="what this worker holds now")
    serving: str | None = Field(description="version this worker serves unpinned requests with")


class PromoteRequest(Contract):
    stage: ModelStage = Field("production", description="moving to production archives the version serving before")


__all__ = [
    "LoadedModel",
    "ModelCard",
    "ModelName",
    "ModelStage",
    "ModelVersionPublic",
    "ModelVersionText",
    "ModelsResponse",
    "PromoteRequest",
]
