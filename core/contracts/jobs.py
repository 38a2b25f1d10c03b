"""Background jobs: what a caller submits (one model per kind, a union discriminated by ``kind``) and
what it reads back. The HTTP route, the CLI and the runner (:mod:`hazardlens.jobs`) all validate a job
with these models, so a job the API refuses is refused by the CLI in the same words.

The models check what can be checked without the server's state (shapes, names, bounds); whether
the training config exists and the dataset is visible to the caller is checked at submission by the
kind's handler (:func:`hazardlens.jobs.register`), so a typo fails the request, not the job an hour later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError, field_validator

from hazardlens.contracts.common import Contract, Key, Public
from hazardlens.contracts.filters import SampleFilter
from hazardlens.contracts.samples import Timestamp
from hazardlens.errors import Invalid

JobKind = Literal["train", "dataset_export", "prelabel", "blob_gc", "federation_pull", "library_rebuild", "evaluate"]
JobStatus = Literal["queued", "running", "completed", "failed"]
JOB_KINDS: tuple[str, ...] = (
    "train",
    "dataset_export",
    "prelabel",
    "blob_gc",
    "federation_pull",
    "library_rebuild",
    "evaluate",
)
JOB_STATUSES: tuple[str, ...] = ("queued", "running", "completed", "failed")

#: ``NAME@VERSION``: a dataset name (as ``datasets create`` accepts it) and ``latest``, a number
#: (``3``, ``v3``) or 4+ hex digits of the version id.
DatasetRef = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=3,
        max_length=165,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}@[A-Za-z0-9]{1,64}$",
    ),
]
#: A training config by name (``baseline`` or ``baseline.yaml``), never a path: a job must not make the
#: server read an arbitrary file.
ConfigName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]
ExportFormat = Literal["yolo", "coco"]
StrictBool = Annotated[bool, Field(strict=True)]
Count = Annotated[int, Field(strict=True, ge=0, le=10**9)]


def _dataset_ref(value: Any) -> Any:
    if isinstance(value, str) and "@" not in value:
        raise ValueError("give the dataset as NAME@VERSION (e.g. ppe@latest)")
    return value


class TrainJobParams(Contract):
    """Train on a dataset version with a training config; the run is registered as a candidate model."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    dataset: DatasetRef = Field(description="NAME@VERSION of the dataset version to train on", examples=["ppe@latest"])
    config: ConfigName = Field(
        description="name of a training config: <home>/configs/train/NAME.yaml, "
        "$HAZARDLENS_CONFIG_DIR/train/NAME.yaml or the shipped configs/train/",
        examples=["baseline"],
    )
    resume: StrictBool = Field(False, description="continue the last interrupted run of this dataset and config")
    # ``register`` would shadow BaseModel.register (ABCMeta): the field is named otherwise, spelt ``register``.
    register_model: StrictBool = Field(
        True, alias="register", description="register the trained weights as a candidate model version"
    )

    @field_validator("dataset", mode="before")
    @classmethod
    def _ref(cls, value: Any) -> Any:
        return _dataset_ref(value)

    @field_validator("config", mode="before")
    @classmethod
    def _name_not_path(cls, value: Any) -> Any:
        if isinstance(value, str):
            name = value.strip()
            if "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"config {name!r} must be a config name (e.g. 'baseline'), not a path")
        return value


class DatasetExportJobParams(Contract):
    """Export a dataset version as YOLO or COCO into ``<home>/exports/job-<id>``."""

    dataset: DatasetRef = Field(description="NAME@VERSION of the dataset version to export", examples=["ppe@latest"])
    format: ExportFormat = "yolo"
    train_caps: Annotated[dict[Key, Count], Field(max_length=500)] | None = Field(
        None, description="class key -> at most this many train images holding only capped classes"
    )

    @field_validator("dataset", mode="before")
    @classmethod
    def _ref(cls, value: Any) -> Any:
        return _dataset_ref(value)

    @field_validator("train_caps")
    @classmethod
    def _empty_is_unset(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        return value or None


#: A model version as a job names it (registry versions are "1", "2", ...; "production" is the default).
ModelVersionName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]


class PrelabelJobParams(Contract):
    """Pre-label every sample of the caller's organisation that matches ``filters`` with one model
    version: an open suggestion per sample (never a label), in shards of ``shard_size`` samples run
    in parallel by the workers. Shared samples of other organisations are theirs to label: skipped."""

    filters: SampleFilter = Field(
        default_factory=SampleFilter, description="which samples (the sample search's filters); none: all"
    )
    model: ModelVersionName | None = Field(
        None,
        description="model version to use; unset or 'production': the production version when the job starts "
        "(every shard then uses that one version, even if another is promoted meanwhile)",
        examples=["production", "3"],
    )
    conf: float = Field(0.25, ge=0.01, le=0.99, description="confidence threshold")
    shard_size: Annotated[int, Field(strict=True, ge=1, le=5000)] | None = Field(
        None, description="samples per shard (default HAZARDLENS_SHARD_SIZE, 200)"
    )

    @field_validator("filters", mode="before")
    @classmethod
    def _no_filters(cls, value: Any) -> Any:
        return {} if value is None else value


class BlobGcJobParams(Contract):
    """Remove stored objects no catalogue row names (a failed insert can leave its blob behind):
    content-addressed photos and thumbnails no sample has, files of model versions that were never
    registered. Only objects older than ``grace_hours`` go, so that what an ingest in flight has just
    written (its row not committed yet) is never removed. System organisation's admins only."""

    dry_run: StrictBool = Field(False, description="only report what would be removed; delete nothing")
    grace_hours: float = Field(
        24.0,
        ge=0.0,
        le=24.0 * 366,
        allow_inf_nan=False,
        description="keep unreferenced objects younger than this (hours); an ingest writes its photo before its "
        "row, so a small value risks removing a photo being ingested right now",
    )


#: What a federation pull fetches from a peer (docs/federation.md).
PullPart = Literal["samples", "models", "taxonomy"]


def _default_parts() -> list[PullPart]:
    return ["samples", "models"]


class FederationPullJobParams(Contract):
    """Pull from a registered peer (system organisation): what its scheduled pull or ``hazardlens sync
    pull`` fetches, as a job, so that it runs on the embedded runner or a Celery worker alike."""

    peer: str = Field(
        min_length=1, max_length=60, pattern=r"^[a-z0-9_-]+$", description="the peer's name", examples=["hubei"]
    )
    what: list[PullPart] = Field(default_factory=_default_parts, min_length=1, max_length=3, description="what to pull")
    full: StrictBool = Field(
        False, description="samples from cursor 0 (moves no bytes already held; closes the cursor gap)"
    )
    page_size: Annotated[int, Field(strict=True, ge=1, le=500)] = Field(100, description="samples per page")
    scheduled: StrictBool = Field(False, description="submitted by the peer's schedule")


#: What a library rebuild re-makes for each sample (README, "library-wide batch work").
RebuildPart = Literal["thumbnails", "near_duplicates"]


def _default_rebuild() -> list[RebuildPart]:
    return ["thumbnails", "near_duplicates"]


class LibraryRebuildJobParams(Contract):
    """Rebuild, for every sample of the caller's organisation that matches ``filters``, its thumbnail
    (re-rendered from the stored photo, as ingest makes it) and/or its near-duplicate links (looked up
    again, as ingest does), in shards of ``shard_size`` samples. Shared samples of other
    organisations are theirs to curate: skipped. Mends what a lost thumbnail object, a restored
    catalogue or a changed ``HAZARDLENS_THUMBNAIL_SIZE`` / near-duplicate distance left behind."""

    what: list[RebuildPart] = Field(
        default_factory=_default_rebuild,
        min_length=1,
        max_length=2,
        description="what to rebuild: thumbnails, near_duplicates (default both)",
    )
    filters: SampleFilter = Field(
        default_factory=SampleFilter, description="which samples (the sample search's filters); none: all"
    )
    shard_size: Annotated[int, Field(strict=True, ge=1, le=5000)] | None = Field(
        None, description="samples per shard (default HAZARDLENS_SHARD_SIZE, 200)"
    )

    @field_validator("filters", mode="before")
    @classmethod
    def _no_blank_filters(cls, value: Any) -> Any:
        # SampleFilter reads a blank field as "no filter" (empty form fields, CLI defaults); in a JSON body
        # the document says every filter has at least one character, and a blank one would quietly widen
        # the rebuild to the whole library: refused, as the document says.
        if isinstance(value, Mapping):
            blank = sorted(str(k) for k, v in value.items() if isinstance(v, str) and not v.strip())
            if blank:
                raise ValueError(f"blank filter(s) {', '.join(blank)}: leave a filter out instead")
        return value

    @field_validator("what")
    @classmethod
    def _once_each(cls, value: list[RebuildPart]) -> list[RebuildPart]:
        return list(dict.fromkeys(value))


#: A registered model's name (``hazardlens``), never a path.
ModelName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]
EvalSplit = Literal["train", "val", "test"]


class EvaluateJobParams(Contract):
    """Evaluate a registered model version on a dataset version's split (what ``hazardlens evaluate``
    does), on a worker: mAP overall, per class and, with ``by_tag``, per source. Not sharded: the
    mAP needs every prediction of the split together."""

    model: ModelName = Field("hazardlens", description="registered model name", examples=["hazardlens"])
    version: ModelVersionName = Field(
        "production",
        description="registered version, or 'production' (the version in production when the job starts)",
        examples=["3", "production"],
    )
    dataset: DatasetRef = Field(description="NAME@VERSION of the dataset version to evaluate on", examples=["ppe@3"])
    split: EvalSplit = Field("val", description="which split of the dataset version")
    by_tag: StrictBool = Field(False, description="also per source: per-class figures for each sample tag")

    @field_validator("dataset", mode="before")
    @classmethod
    def _ref(cls, value: Any) -> Any:
        return _dataset_ref(value)

    @field_validator("model", "version")
    @classmethod
    def _registered_not_file(cls, value: str) -> str:
        # the evaluation reads NAME:VERSION ending in .pt as a weights file: a job names registry entries only
        if value.lower().endswith(".pt"):
            raise ValueError(f"{value!r} must name a registered model, not a weights file")
        return value


class TrainJobIn(Contract):
    kind: Literal["train"]
    params: TrainJobParams


class DatasetExportJobIn(Contract):
    kind: Literal["dataset_export"]
    params: DatasetExportJobParams


class PrelabelJobIn(Contract):
    kind: Literal["prelabel"]
    params: PrelabelJobParams = Field(default_factory=PrelabelJobParams)


class BlobGcJobIn(Contract):
    kind: Literal["blob_gc"]
    params: BlobGcJobParams = Field(default_factory=BlobGcJobParams)


class FederationPullJobIn(Contract):
    kind: Literal["federation_pull"]
    params: FederationPullJobParams


class LibraryRebuildJobIn(Contract):
    kind: Literal["library_rebuild"]
    params: LibraryRebuildJobParams = Field(default_factory=LibraryRebuildJobParams)


class EvaluateJobIn(Contract):
    kind: Literal["evaluate"]
    params: EvaluateJobParams


AnyJobIn = (
    TrainJobIn
    | DatasetExportJobIn
    | PrelabelJobIn
    | BlobGcJobIn
    | FederationPullJobIn
    | LibraryRebuildJobIn
    | EvaluateJobIn
)
#: What ``POST /v1/jobs`` accepts: ``{"kind": ..., "params": {...}}``, the params model chosen by ``kind``.
JobIn = Annotated[AnyJobIn, Field(discriminator="kind")]
JobParams = (
    TrainJobParams
    | DatasetExportJobParams
    | PrelabelJobParams
    | BlobGcJobParams
    | FederationPullJobParams
    | LibraryRebuildJobParams
    | EvaluateJobParams
)
_JOB_IN: TypeAdapter[AnyJobIn] = TypeAdapter(JobIn)
_PARAMS_MODELS: dict[str, type[BaseModel]] = {
    "train": TrainJobParams,
    "dataset_export": DatasetExportJobParams,
    "prelabel": PrelabelJobParams,
    "blob_gc": BlobGcJobParams,
    "federation_pull": FederationPullJobParams,
    "library_rebuild": LibraryRebuildJobParams,
    "evaluate": EvaluateJobParams,
}


def parse_job(kind: str, params: JobParams | Mapping[str, Any] | None) -> AnyJobIn:
    """A submission from the CLI or Python as the same model the API validates, or :class:`Invalid`
    (code ``invalid_job``) naming every problem."""
    if kind not in JOB_KINDS:
        raise Invalid(f"unknown job kind {kind!r}; kinds are {', '.join(JOB_KINDS)}", code="invalid_job")
    if isinstance(params, BaseModel):
        params = params.model_dump(by_alias=True)
    if params is not None and not isinstance(params, Mapping):
        raise Invalid("'params' must be an object", code="invalid_job")
    try:
        return _JOB_IN.validate_python({"kind": kind, "params": dict(params or {})})
    except ValidationError as exc:
        raise invalid_job(kind, exc) from None


def invalid_job(kind: str, exc: ValidationError) -> Invalid:
    """A validation error of a job as one readable :class:`Invalid`: unknown parameters first (a
    misspelt flag is the usual mistake), then every other problem with its parameter's name."""
    errors = exc.errors()
    unknown = sorted(str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden" and e["loc"])
    model = _PARAMS_MODELS.get(kind, DatasetExportJobParams)
    if unknown:
        what = {
            "train": "train",
            "prelabel": "prelabel",
            "federation_pull": "federation pull",
            "blob_gc": "blob_gc",
            "library_rebuild": "library rebuild",
            "evaluate": "evaluate",
        }.get(kind, "export")
        known = ", ".join(sorted(f.alias or n for n, f in model.model_fields.items()))
        return Invalid(
            f"unknown {what} parameter(s) {', '.join(unknown)}; known: {known}",
            code="invalid_job",
            details={"unknown": unknown},
        )
    problems = []
    for e in errors:
        loc = [str(p) for p in e["loc"] if p not in (kind, "params")]
        msg = str(e["msg"]).removeprefix("Value error, ")
        problems.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return Invalid(f"invalid {kind} job: {'; '.join(problems)}", code="invalid_job", details=problems)


class JobSummary(Public):
    """A job as the list shows it (everything but the log tail)."""

    id: int
    kind: JobKind
    status: JobStatus
    params: dict[str, Any] = Field(
        description="the validated parameters (TrainJobParams, DatasetExportJobParams, PrelabelJobParams, "
        "BlobGcJobParams, FederationPullJobParams, LibraryRebuildJobParams or EvaluateJobParams)"
    )
    progress: float = Field(ge=0.0, le=1.0, description="0..1, written while the job runs")
    message: str | None = Field(description="the latest progress message")
    result: dict[str, Any] | None = Field(
        description=(
            "when completed: train: {run_id, run_dir, status, dataset, device, metrics, best, last, model, resumed}; "
            "dataset_export: {dataset, dataset_id, format, path, files, output}; "
            "prelabel: {model_version, samples, suggested, boxes, failed, failures: [{sample_id, reason}], "
            "shards, shards_failed: [{shard, attempts, error}]}; "
            "blob_gc: {dry_run, grace_hours, scanned, referenced, orphans, young_orphans, collectable, deleted, "
            "bytes_freed, restored, failed, failures: [{key, reason}], removed: [key], unrecognised}; "
            "federation_pull: {peer, full, scheduled, samples: {added, updated, withdrawn, blobs, blob_bytes, "
            "cursor, ...}, models: {registered, already_held}, taxonomy: {received, added, updated, withdrawn}}; "
            "library_rebuild: {what, samples, thumbnails, thumbnails_missing, links_added, links_removed, links_kept, "
            "dup_groups_changed, failed, failures: [{sample_id, what, reason}], shards, shards_failed}; "
            "evaluate: {model, dataset, dataset_id, split, images, instances, precision, recall, map50, map50_95, "
            "per_class: {class: AP50}, per_tag: {tag: {images, map50, map50_95, per_class}}, report, report_md}"
        )
    )
    error: str | None = Field(description="when failed: 'code: message' (or 'interrupted by restart')")
    created_by: int | None = Field(description="the submitting user's id")
    shards: int = Field(
        0, description="sharded kinds (prelabel, library_rebuild): how many shards the job was cut into"
    )
    created_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None


class JobPublic(JobSummary):
    """One job with its log tail (the last 200 lines the job logged)."""

    log: str | None


class JobPage(Public):
    """Recent jobs, newest first (``GET /v1/jobs/{id}`` has each one's log)."""

    items: list[JobSummary]


__all__ = [
    "JOB_KINDS",
    "BlobGcJobIn",
    "BlobGcJobParams",
    "JOB_STATUSES",
    "ConfigName",
    "DatasetExportJobIn",
    "DatasetExportJobParams",
    "DatasetRef",
    "EvalSplit",
    "EvaluateJobIn",
    "EvaluateJobParams",
    "FederationPullJobIn",
    "FederationPullJobParams",
    "ExportFormat",
    "JobIn",
    "JobKind",
    "JobPage",
    "JobParams",
    "JobPublic",
    "JobStatus",
    "JobSummary",
    "LibraryRebuildJobIn",
    "LibraryRebuildJobParams",
    "ModelName",
    "ModelVersionName",
    "PrelabelJobIn",
    "PrelabelJobParams",
    "RebuildPart",
    "TrainJobIn",
    "TrainJobParams",
    "invalid_job",
    "parse_job",
]
