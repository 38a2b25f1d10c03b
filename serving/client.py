"""A small typed client for the enforcement-system side (执法系统): detect, record photos on an
inspection record, read the record, relay the inspector's decisions.

Uploads from the field go over poor networks, so :meth:`HazardLensClient.record_photo` always sends
an ``Idempotency-Key`` (a new UUID unless the caller passes one) and retries lost or 502/503/504
answers with the same key: the server stores the photo once and replays its first answer. Reviews
are not retried after a request may have reached the server (a retried decision would answer 409).
Every error answer is raised as :class:`HazardLensError` with the API's ``code`` and ``message``.

    with HazardLensClient("http://10.0.0.5:8000", key) as hl:
        rec = hl.record_photo("鄂应急检〔2026〕3号", "site.jpg", enterprise_id="91420100MA4K", sector="dust")
        for f in rec.findings:
            hl.review_finding(f.id, "confirmed")
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

if TYPE_CHECKING:
    from hazardlens.contracts.datasets import DatasetPage, DatasetVersionDetail, DatasetVersionPublic
    from hazardlens.contracts.jobs import JobPage, JobPublic
    from hazardlens.contracts.models import ModelsResponse, ModelVersionPublic

RETRY_STATUSES = frozenset({502, 503, 504})


class HazardLensError(Exception):
    """An error answer (``status``, ``code``, ``message``), or a transport failure (status 0)."""

    def __init__(
        self, status: int, code: str, message: str, details: Any = None, request_id: str | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.details, self.request_id = details, request_id


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> Box:
        return cls(float(d["x1"]), float(d["y1"]), float(d["x2"]), float(d["y2"]))


@dataclass(frozen=True)
class Detection:
    class_key: str
    name_zh: str
    name_en: str
    confidence: float
    box: Box
    inspection_items: tuple[str, ...]
    legal_basis: tuple[str, ...]
    severity: str | None
    is_hazard: bool

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> Detection:
        return cls(
            d["class_key"],
            d["name_zh"],
            d["name_en"],
            float(d["confidence"]),
            Box.of(d["box"]),
            tuple(d.get("inspection_items", ())),
            tuple(d.get("legal_basis", ())),
            d.get("severity"),
            bool(d.get("is_hazard", False)),
        )


@dataclass(frozen=True)
class DetectResult:
    model_name: str
    model_version: str
    width: int
    height: int
    detections: tuple[Detection, ...]
    timing_ms: Mapping[str, float]

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> DetectResult:
        return cls(
            d["model"]["name"],
            d["model"]["version"],
            int(d["image"]["width"]),
            int(d["image"]["height"]),
            tuple(Detection.of(x) for x in d["detections"]),
            dict(d["timing_ms"]),
        )


@dataclass(frozen=True)
class Finding:
    """A suggested finding (疑似隐患) until the inspector confirms it."""

    id: int
    class_key: str
    name_zh: str
    confidence: float
    box: Box
    inspection_items: tuple[str, ...]
    legal_basis: tuple[str, ...]
    severity: str | None
    finding: str
    status: str
    model_version: str
    revision_id: int | None

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> Finding:
        return cls(
            int(d["id"]),
            d["class_key"],
            d["name_zh"],
            float(d["confidence"]),
            Box.of(d["box"]),
            tuple(d.get("inspection_items", ())),
            tuple(d.get("legal_basis", ())),
            d.get("severity"),
            d.get("finding", ""),
            d["status"],
            d.get("model_version", ""),
            d.get("revision_id"),
        )


@dataclass(frozen=True)
class PhotoRecord:
    record_no: str
    photo_id: int
    sample_id: int
    model_version: str
    width: int
    height: int
    findings: tuple[Finding, ...]
    detections: tuple[Detection, ...]
    replayed: bool
    idempotency_key: str | None = None

    @classmethod
    def of(cls, d: Mapping[str, Any], key: str | None = None) -> PhotoRecord:
        return cls(
            d["record_no"],
            int(d["photo_id"]),
            int(d["sample_id"]),
            d["model"]["version"],
            int(d["image"]["width"]),
            int(d["image"]["height"]),
            tuple(Finding.of(f) for f in d["findings"]),
            tuple(Detection.of(x) for x in d["detections"]),
            bool(d.get("replayed", False)),
            key,
        )


@dataclass(frozen=True)
class InspectionPhoto:
    photo_id: int
    sample_id: int
    enterprise_id: str | None
    inspector_id: str | None
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class Inspection:
    record_no: str
    photos: tuple[InspectionPhoto, ...]
    summary: Mapping[str, int]

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> Inspection:
        photos = tuple(
            InspectionPhoto(
                int(p["photo_id"]),
                int(p["sample_id"]),
                p.get("enterprise_id"),
                p.get("inspector_id"),
                tuple(Finding.of(f) for f in p["findings"]),
            )
            for p in d["photos"]
        )
        return cls(d["record_no"], photos, dict(d["summary"]))


@dataclass(frozen=True)
class ReviewResult:
    finding: Finding
    record_no: str
    revision_id: int | None

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> ReviewResult:
        rev = d.get("revision")
        return cls(Finding.of(d), d["record_no"], int(rev["id"]) if rev else None)


def _image(image: bytes | str | Path, filename: str | None) -> tuple[str, bytes]:
    if isinstance(image, bytes):
        return filename or "photo.jpg", image
    path = Path(image)
    return filename or path.name, path.read_bytes()


class HazardLensClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries, self.backoff_s = retries, backoff_s
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HazardLensClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _send(self, call: Callable[[], httpx.Response], *, retry: bool) -> dict[str, Any]:
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = call()
            except httpx.TransportError as exc:
                if last:
                    raise HazardLensError(0, "transport", f"{type(exc).__name__}: {exc}") from exc
            else:
                if response.status_code < 400:
                    return response.json()
                if last or response.status_code not in RETRY_STATUSES:
                    raise _error(response)
            time.sleep(self.backoff_s * (2**attempt))
        raise AssertionError("unreachable")

    # --- API ----------------------------------------------------------------------------------

    def detect(
        self,
        image: bytes | str | Path,
        *,
        conf: float | None = None,
        sector: str | None = None,
        model: str | None = None,
        filename: str | None = None,
    ) -> DetectResult:
        name, data = _image(image, filename)
        form = {k: str(v) for k, v in {"conf": conf, "sector": sector, "model": model}.items() if v is not None}
        return DetectResult.of(
            self._send(
                lambda: self._http.post(
                    "/v1/detect", data=form, files={"file": (name, data, "application/octet-stream")}
                ),
                retry=True,
            )
        )

    def record_photo(
        self,
        record_no: str,
        image: bytes | str | Path,
        *,
        enterprise_id: str,
        sector: str,
        inspector_id: str | None = None,
        captured_at: datetime | str | None = None,
        item_codes: Sequence[str] = (),
        idempotency_key: str | None = None,
        conf: float | None = None,
        filename: str | None = None,
    ) -> PhotoRecord:
        """Add a photo to the record; safe to call again with the same ``idempotency_key``."""
        name, data = _image(image, filename)
        key = idempotency_key or str(uuid.uuid4())
        form = {"enterprise_id": enterprise_id, "sector": sector}
        if inspector_id is not None:
            form["inspector_id"] = inspector_id
        if captured_at is not None:
            form["captured_at"] = captured_at.isoformat() if isinstance(captured_at, datetime) else captured_at
        if item_codes:
            form["item_codes"] = ",".join(item_codes)
        if conf is not None:
            form["conf"] = str(conf)
        body = self._send(
            lambda: self._http.post(
                f"/v1/inspections/{quote(record_no, safe='')}/photos",
                data=form,
                files={"file": (name, data, "application/octet-stream")},
                headers={"Idempotency-Key": key},
            ),
            retry=True,
        )
        return PhotoRecord.of(body, key)

    def get_inspection(self, record_no: str) -> Inspection:
        return Inspection.of(
            self._send(lambda: self._http.get(f"/v1/inspections/{quote(record_no, safe='')}"), retry=True)
        )

    def review_finding(
        self,
        finding_id: int,
        decision: str,
        *,
        box: Box | Mapping[str, float] | None = None,
        class_key: str | None = None,
    ) -> ReviewResult:
        """``decision`` is ``confirmed`` or ``rejected``; ``box``/``class_key`` correct a confirmation."""
        payload: dict[str, Any] = {"decision": decision}
        if box is not None:
            payload["box"] = asdict(box) if isinstance(box, Box) else dict(box)
        if class_key is not None:
            payload["class_key"] = class_key
        return ReviewResult.of(
            self._send(lambda: self._http.post(f"/v1/findings/{int(finding_id)}/review", json=payload), retry=False)
        )

    # --- jobs, models, dataset versions (answers are the contract models of hazardlens.contracts) ---

    def submit_job(self, kind: str, params: Mapping[str, Any] | Any) -> JobPublic:
        """Queue a ``train`` or ``dataset_export`` job (``params``: a mapping or the kind's params model,
        e.g. ``TrainJobParams(dataset="ppe@latest", config="baseline")``). Not retried: a retry could
        queue the job twice."""
        from hazardlens.contracts.jobs import JobPublic

        body = (
            params.model_dump(mode="json", by_alias=True, exclude_none=True)
            if hasattr(params, "model_dump")
            else dict(params)
        )
        return JobPublic.model_validate(
            self._send(lambda: self._http.post("/v1/jobs", json={"kind": kind, "params": body}), retry=False)
        )

    def get_job(self, job_id: int) -> JobPublic:
        from hazardlens.contracts.jobs import JobPublic

        return JobPublic.model_validate(self._send(lambda: self._http.get(f"/v1/jobs/{int(job_id)}"), retry=True))

    def list_jobs(self, *, status: str | None = None, kind: str | None = None, limit: int = 100) -> JobPage:
        from hazardlens.contracts.jobs import JobPage

        query = {k: v for k, v in {"status": status, "kind": kind, "limit": limit}.items() if v is not None}
        return JobPage.model_validate(self._send(lambda: self._http.get("/v1/jobs", params=query), retry=True))

    def wait_for_job(self, job_id: int, *, timeout: float = 3600.0, poll_s: float = 2.0) -> JobPublic:
        """Poll until the job has completed or failed (raises TimeoutError after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if job.status in ("completed", "failed"):
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout:g} s")
            time.sleep(poll_s)

    def list_models(self) -> ModelsResponse:
        from hazardlens.contracts.models import ModelsResponse

        return ModelsResponse.model_validate(self._send(lambda: self._http.get("/v1/models"), retry=True))

    def promote_model(self, name: str, version: str, stage: str = "production") -> ModelVersionPublic:
        from hazardlens.contracts.models import ModelVersionPublic

        path = f"/v1/models/{quote(name, safe='')}/{quote(version, safe='')}/promote"
        return ModelVersionPublic.model_validate(
            self._send(lambda: self._http.post(path, json={"stage": stage}), retry=True)
        )  # promoting twice changes nothing

    def rollback_model(self, name: str = "hazardlens") -> ModelVersionPublic:
        from hazardlens.contracts.models import ModelVersionPublic

        return ModelVersionPublic.model_validate(
            self._send(lambda: self._http.post(f"/v1/models/{quote(name, safe='')}/rollback"), retry=False)
        )

    def create_dataset(self, body: Mapping[str, Any] | Any) -> DatasetVersionPublic:
        """Create a dataset version (``body``: a mapping or :class:`~hazardlens.contracts.datasets.DatasetCreate`);
        the identical existing version is returned when the same inputs made one before."""
        from hazardlens.contracts.datasets import DatasetVersionPublic

        payload = body.model_dump(mode="json", exclude_defaults=True) if hasattr(body, "model_dump") else dict(body)
        return DatasetVersionPublic.model_validate(
            self._send(lambda: self._http.post("/v1/datasets", json=payload), retry=True)
        )  # same inputs, same version

    def list_datasets(self, name: str | None = None) -> DatasetPage:
        from hazardlens.contracts.datasets import DatasetPage

        query = {"name": name} if name else {}
        return DatasetPage.model_validate(self._send(lambda: self._http.get("/v1/datasets", params=query), retry=True))

    def get_dataset(self, name: str, version: str = "latest") -> DatasetVersionDetail:
        from hazardlens.contracts.datasets import DatasetVersionDetail

        path = f"/v1/datasets/{quote(name, safe='')}/{quote(str(version), safe='')}"
        return DatasetVersionDetail.model_validate(self._send(lambda: self._http.get(path), retry=True))


def _error(response: httpx.Response) -> HazardLensError:
    rid = response.headers.get("x-request-id")
    try:
        err = response.json()["error"]
        return HazardLensError(
            response.status_code, err.get("code", "error"), err.get("message", ""), err.get("details"), rid
        )
    except Exception:
        return HazardLensError(response.status_code, "http_error", response.text[:500], None, rid)


__all__ = [
    "Box",
    "DetectResult",
    "Detection",
    "Finding",
    "HazardLensClient",
    "HazardLensError",
    "Inspection",
    "InspectionPhoto",
    "PhotoRecord",
    "ReviewResult",
]
