"""The Label Studio ML backend protocol (``GET /health``, ``POST /setup``, ``POST /predict``) as Label
Studio speaks it, and the pre-labelling request of hazardlens' own API.

Label Studio's requests carry more than hazardlens reads (a task holds its annotations, predictions,
meta...; setup sends a hostname and an access token), and later Label Studio versions add keys: the
protocol models therefore keep unknown keys (``extra="allow"``) instead of refusing them, unlike every
other request model, and bound only what hazardlens reads. Answers are exactly the shapes Label Studio
expects: ``{"results": [{"result": [...], "score": ..., "model_version": ...}]}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hazardlens.contracts.common import Contract, Public

#: Tasks per /predict call: "retrieve predictions" sends every selected task at once; the backend
#: works through them in chunks. Bounded by this and by the request body limit.
MAX_TASKS = 10_000
#: Label Studio sends project ids as numbers or as ``"<id>.<timestamp>"`` text.
#: (Strict int: a long numeric text is the text, bounded like any other, not an int.)
ProjectRef = Annotated[int, Field(strict=True)] | Annotated[str, Field(max_length=100)]


class _Protocol(BaseModel):
    """Label Studio's own shapes: unknown keys are kept, never refused."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class LsTask(_Protocol):
    """A Label Studio task. The image is found in ``data``: ``data.sample_id`` (a library sample, as
    hazardlens' Label Studio export writes it), an image URL ending in ``/v1/samples/<id>/image``, the
    export's local-files URL ``/data/local-files/?d=images/<id>_<name>``, or a ``data:`` URI; a file
    uploaded into Label Studio (``/data/upload/...``) or in its local-files storage is fetched from
    the configured Label Studio (``HAZARDLENS_LABEL_STUDIO_URL`` and ``_TOKEN``), no other URL."""

    id: int | None = None
    data: Annotated[
        dict[str, Any],
        Field(max_length=100, description="the task's data; keys follow the labelling config (image, sample_id...)"),
    ]


class LsSetupRequest(_Protocol):
    project: ProjectRef | None = None
    schema_: Annotated[str, Field(max_length=1_000_000)] | None = Field(
        None, alias="schema", description="the project's labelling config (XML)"
    )
    model_version: Annotated[str, Field(max_length=100)] | None = None


class LsPredictRequest(_Protocol):
    tasks: Annotated[list[LsTask], Field(min_length=1, max_length=MAX_TASKS)]
    label_config: Annotated[str, Field(max_length=1_000_000)] | None = None
    params: dict[str, Any] | None = Field(None, description="Label Studio's login/password/context; not read")
    project: ProjectRef | None = None
    model_version: Annotated[str, Field(max_length=100)] | None = None


class LsHealth(Public):
    status: Literal["UP"]
    model_class: str
    model_version: str | None = Field(description="the version this worker serves; null before one is loaded")


class LsLabelConfig(Public):
    """How the backend reads the project's label config."""

    from_name: str = Field(description="the RectangleLabels tag's name: predictions' from_name")
    to_name: str = Field(description="the Image tag's name: predictions' to_name")
    image_key: str = Field(description="the task data key the Image tag reads ($value)")
    labels: dict[str, str] | None = Field(
        description="class key -> the project's label value; null when the "
        "config declares none (class keys are the labels)"
    )
    unknown_labels: list[str] = Field(description="label values that name no class: never predicted")
    problems: list[str] = Field(description="why the defaults are used, when they are")


class LsSetup(Public):
    model_version: str
    label_config: LsLabelConfig | None = Field(
        None, description="the project's label config as read; absent when setup sent none"
    )


class LsWebhook(_Protocol):
    """A Label Studio webhook event. ``ANNOTATION_CREATED`` and ``ANNOTATION_UPDATED`` are stored (the
    annotation's rectangles as a submitted revision of the task's sample); every other event is
    acknowledged and ignored."""

    action: Annotated[str, Field(max_length=100)]
    annotation: dict[str, Any] | None = Field(
        None, description="the annotation: result (rectanglelabels), id, was_cancelled..."
    )
    task: dict[str, Any] | None = Field(None, description="the task: id, data (sample_id or image URL)")
    project: dict[str, Any] | None = Field(None, description="the project; its label_config maps labels")


class LsWebhookAnswer(Public):
    status: Literal["stored", "unchanged", "ignored"]
    sample_id: int | None = None
    revision_id: int | None = None
    revision_number: int | None = None
    reason: str | None = Field(None, description="why an event was ignored")
    problems: list[str] = Field(default_factory=list)


class LsRectangle(Public):
    """A box in percent of the image (Label Studio's coordinates)."""

    x: float
    y: float
    width: float
    height: float
    rotation: float
    rectanglelabels: list[str] = Field(description="the taxonomy class key")


class LsResult(Public):
    id: str
    type: Literal["rectanglelabels"]
    from_name: str
    to_name: str
    original_width: int
    original_height: int
    image_rotation: float
    value: LsRectangle
    score: float | None = Field(None, description="the model's confidence; absent when unknown")


class LsPrediction(Public):
    result: list[LsResult]
    score: float = Field(description="mean confidence of the boxes (0 without boxes)")
    model_version: str


class LsPredictions(Public):
    """What ``/predict`` answers: one prediction per task, in task order."""

    results: list[LsPrediction]


class SuggestRequest(Contract):
    """``POST /v1/suggestions/request``: model suggestions on samples, or on the caller's queue."""

    # Samples, or the queue: a request with neither is refused by the domain (invalid_request).
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["sample_ids"], "properties": {"sample_ids": {"minItems": 1}}},
                {"required": ["queue"], "properties": {"queue": {"const": True}}},
            ]
        },
    )

    sample_ids: list[Annotated[int, Field(ge=1, le=2**53)]] = Field(
        default_factory=list, max_length=100, description="samples to pre-label"
    )
    queue: bool = Field(False, description="pre-label the open samples of my queue instead")
    limit: int = Field(20, ge=1, le=100, description="with queue: at most this many samples of it")
    conf: float = Field(0.25, ge=0.0, le=1.0)
    model: str | None = Field(None, max_length=40, description="pin a model version (default: production)")


__all__ = [
    "MAX_TASKS",
    "LsHealth",
    "LsLabelConfig",
    "LsPredictRequest",
    "LsPrediction",
    "LsPredictions",
    "LsRectangle",
    "LsResult",
    "LsSetup",
    "LsSetupRequest",
    "LsTask",
    "LsWebhook",
    "LsWebhookAnswer",
    "ProjectRef",
    "SuggestRequest",
]
