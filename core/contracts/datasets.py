"""Dataset versions: immutable, content-addressed selections of approved labels, split for training."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from hazardlens.contracts.common import Contract, Key, Public
from hazardlens.contracts.filters import SampleFilter
from hazardlens.contracts.samples import Timestamp

Split = Literal["train", "val", "test"]
GroupBy = Literal["camera", "site", "enterprise"]
#: A dataset name: it becomes part of storage keys and of ``NAME@VERSION`` references.
DatasetName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="letters, digits, '.', '_', '-', starting with a letter or digit",
    ),
]
Ratio = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class DatasetCreate(Contract):
    """``POST /v1/datasets``: freeze the approved labels of the matching visible samples."""

    name: DatasetName
    filters: SampleFilter = Field(default_factory=SampleFilter)
    group_by: GroupBy = Field("camera", description="what never straddles two splits")
    ratios: Annotated[
        list[Ratio], Field(min_length=3, max_length=3, description="train, val, test fractions (sum 1)")
    ] = [0.8, 0.1, 0.1]
    seed: Annotated[int, Field(ge=0, le=2**31 - 1, description="split seed: same inputs + seed = same version")] = 0
    classes: Annotated[list[Key], Field(min_length=1, max_length=500)] | None = Field(
        None, description="fixed class list and order; default: the classes present, in taxonomy order"
    )


class SplitCounts(Public):
    model_config = ConfigDict(extra="allow")

    images: int
    instances: int
    negatives: int = Field(description="images without a box (verified negatives)")
    groups: int = Field(description="distinct split units (cameras, sites...)")


class ClassSplitCounts(Public):
    images: int
    instances: int


class NearDuplicateStats(Public):
    model_config = ConfigDict(extra="allow")

    cross_split_pairs: int = Field(description="near-duplicate pairs whose images are in different splits")


class DatasetStats(Public):
    """Counts of a version (the manifest holds the items). Versions made by later code may carry more
    keys; they are passed through."""

    model_config = ConfigDict(extra="allow")

    images: int
    instances: int
    splits: dict[str, SplitCounts] = Field(description="per split: train, val, test")
    classes: dict[str, dict[str, ClassSplitCounts]] = Field(description="class key -> split -> counts")
    dropped_boxes: dict[str, int] | None = Field(None, description="boxes of classes left out of the class list")
    merged_groups: int | None = Field(None, description="split units merged because near-duplicates joined them")
    near_duplicates: NearDuplicateStats | None = None
    missing_in_split: dict[str, list[str]] | None = Field(None, description="split -> classes with no image there")


class DatasetParams(Public):
    """The inputs the version was made from (the same inputs give the same version id)."""

    model_config = ConfigDict(extra="allow")

    filters: dict[str, Any] = Field(description="the sample filter as recorded (SampleFilter fields; dates as text)")
    group_by: str
    ratios: list[float]
    seed: int
    classes: list[str] | None = None
    keep_splits: str | None = Field(None, description="id of the version whose samples kept their split")


class ManifestSummary(Public):
    format: str
    items: int
    groups: int
    verified: bool = Field(description="the stored manifest matches the version id")


class DatasetVersionPublic(Public):
    """A dataset version's summary (the manifest itself stays in the store)."""

    id: str = Field(description="SHA-256 of the version's content (its inputs, classes and items)")
    name: str
    number: int = Field(description="1, 2, 3... per name and organisation, by creation")
    ref: str = Field(description="NAME@<id prefix>: a reference that never moves")
    org_code: str | None
    classes: list[str]
    taxonomy_version: str
    params: DatasetParams
    stats: DatasetStats
    manifest_key: str
    created_at: Timestamp | None
    created_by: str | None = Field(description="the creating user's name")


class DatasetVersionDetail(DatasetVersionPublic):
    """``GET /v1/datasets/{name}/{version}``: the summary and its verified manifest's counts."""

    manifest: ManifestSummary


class DatasetPage(Public):
    datasets: list[DatasetVersionPublic]


__all__ = [
    "ClassSplitCounts",
    "DatasetCreate",
    "DatasetName",
    "DatasetPage",
    "DatasetParams",
    "DatasetStats",
    "DatasetVersionDetail",
    "DatasetVersionPublic",
    "GroupBy",
    "ManifestSummary",
    "NearDuplicateStats",
    "Split",
    "SplitCounts",
]
