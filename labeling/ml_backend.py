"""Label Studio, both ways: the ML backend protocol (``GET /health``, ``POST /setup``, ``POST /predict``),
so teams that label in Label Studio get our model's pre-annotations, and its webhook
(``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED``), so what they label there comes back as submitted
revisions to review and train on in hazardlens.

A task may reference a library sample (``data.sample_id``, as every hazardlens Label Studio export
writes it; an image URL ending in ``/v1/samples/<id>/image``, as the export writes it with
``--image-url-prefix``; or the export's local-files URL ``/data/local-files/?d=images/<id>_<name>``,
whose file name starts with the sample id), or carry the image inline as a ``data:`` URI; those are
resolved without leaving the installation. A file that lives in Label Studio itself (uploaded into
the project, ``/data/upload/...``, or another local-files path) is fetched from Label Studio when the
backend is given its address and a token (:mod:`hazardlens.labeling.ls_images`: that one origin and
those paths only, bounded by the upload limit); without them such a task is answered 422
``unresolvable_image`` saying what to configure.

The project's label config (the ``<View>`` XML Label Studio sends to setup and predict) decides the
names of the result: ``from_name`` is the RectangleLabels tag's name, ``to_name`` its Image's, the
image is read from the Image tag's ``$value`` key, and each label value is mapped to a class key (by
key, or by the class's Chinese or English name). Classes the project does not declare are not
predicted, and labels that name no class are reported (setup answers them; predict logs them).

Like ``request_suggestions``, inference is a :class:`hazardlens.detector.Detector` (serving hands in
its model manager), so labeling does not import the model part, and the boxes hold the classes every
detection answer holds (:func:`hazardlens.detector.detect_relevant`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from sqlalchemy.orm import Session

from hazardlens.auth import Principal
from hazardlens.context import Context
from hazardlens.datasets.library import get_sample
from hazardlens.detections import Box
from hazardlens.detector import DEFAULT_CONF, Detector, detect_relevant, detection_taxonomy
from hazardlens.errors import Invalid
from hazardlens.formats import labelstudio_results
from hazardlens.formats.labelstudio import result_boxes
from hazardlens.labeling.annotations import save_revision
from hazardlens.labeling.exporters import LABELSTUDIO_PREFIX
from hazardlens.labeling.ls_images import LabelStudioImages, label_studio_images
from hazardlens.orm import AnnotationRevision
from hazardlens.store import blob_key
from hazardlens.taxonomy import Taxonomy

log = logging.getLogger("hazardlens.labelstudio")

#: Tasks resolved and predicted together: a "retrieve predictions" on thousands of tasks arrives in
#: one call, and is worked through this many at a time (images held in memory at once).
CHUNK = 64
MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_ELEMENTS = 20_000
_SAMPLE_URL = re.compile(r"/v1/samples/(\d+)/image(?:\?.*)?$")
_EXPORTED_NAME = re.compile(r"(\d+)_[^/]*")  # the export's file names: <sample id>_<original stem>.<ext>
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


# --- the project's label config -----------------------------------------------------------------


@dataclass(frozen=True)
class LabelConfig:
    """What a project's ``<View>`` says about boxes. ``labels`` maps class key -> the project's label
    value; ``None`` (no config, or no RectangleLabels) means class keys are the labels."""

    from_name: str = "label"
    to_name: str = "image"
    image_key: str = "image"
    labels: Mapping[str, str] | None = None
    unknown: tuple[str, ...] = ()  # label values that name no class: never predicted, never stored
    problems: tuple[str, ...] = ()

    def label_of(self, class_key: str) -> str | None:
        return class_key if self.labels is None else self.labels.get(class_key)

    def class_of(self, label: str, taxonomy: Taxonomy) -> str | None:
        if self.labels is not None:
            for key, value in self.labels.items():
                if value == label:
                    return key
            return None
        return _match_class(label, taxonomy)

    def public(self) -> dict[str, Any]:
        return {
            "from_name": self.from_name,
            "to_name": self.to_name,
            "image_key": self.image_key,
            "labels": dict(self.labels) if self.labels is not None else None,
            "unknown_labels": list(self.unknown),
            "problems": list(self.problems),
        }


def _match_class(label: str, taxonomy: Taxonomy) -> str | None:
    """The class a label value names: its key, or its Chinese or English name (case and spaces of
    English names ignored)."""
    text = label.strip()
    if text in taxonomy.classes:
        return text
    folded = " ".join(text.replace("_", " ").split()).casefold()
    for cls in taxonomy.classes.values():
        if text == cls.name_zh or folded in (
            " ".join(cls.name_en.replace("_", " ").split()).casefold(),
            cls.key.replace("_", " ").casefold(),
        ):
            return cls.key
    return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_label_config(xml: str | None, taxonomy: Taxonomy) -> LabelConfig:
    """Read the project's label config (bounded, defusedxml: no DTD, entities or external
    references). A config that cannot be read or has no Image + RectangleLabels pair gives the
    defaults (``label``/``image``, class keys as labels) and says why in ``problems``."""
    if not xml or not xml.strip():
        return LabelConfig()
    if len(xml.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise Invalid(f"the label config is larger than {MAX_CONFIG_BYTES:,} bytes", code="invalid_request")
    try:
        top = fromstring(xml, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (ET.ParseError, DefusedXmlException, ValueError) as exc:
        raise Invalid(f"the label config is not readable XML ({exc})", code="invalid_request") from exc
    elements = list(top.iter())
    if len(elements) > MAX_CONFIG_ELEMENTS:
        raise Invalid(f"the label config has more than {MAX_CONFIG_ELEMENTS:,} elements", code="invalid_request")
    images = {el.get("name"): el for el in elements if _local(el.tag) == "Image" and el.get("name")}
    rects = [el for el in elements if _local(el.tag) == "RectangleLabels" and el.get("name")]
    if not images or not rects:
        return LabelConfig(
            problems=(
                "the label config has no Image with a RectangleLabels on it; "
                "predictions use from_name 'label' and to_name 'image'",
            )
        )
    rect = next((r for r in rects if r.get("toName") in images), rects[0])
    to_name = rect.get("toName") if rect.get("toName") in images else next(iter(images))
    assert to_name is not None
    value = images[to_name].get("value") or "$image"
    image_key = value[1:] if value.startswith("$") else "image"
    labels: dict[str, str] = {}
    unknown: list[str] = []
    for el in rect.iter():
        if _local(el.tag) != "Label" or not el.get("value"):
            continue
        label = str(el.get("value"))
        key = _match_class(label, taxonomy)
        if key is None:
            unknown.append(label)
        else:
            labels.setdefault(key, label)
    if unknown:
        log.warning("Label Studio labels that name no hazardlens class (not predicted): %s", ", ".join(unknown))
    return LabelConfig(
        from_name=str(rect.get("name")), to_name=to_name, image_key=image_key, labels=labels, unknown=tuple(unknown)
    )


# --- tasks to samples ----------------------------------------------------------------------------


def _exported_sample(ref: str, local_prefixes: Sequence[str]) -> int | None:
    """The sample of a local-files URL the export wrote (``<prefix><id>_<name>``), for each prefix
    (e.g. ``/data/local-files/?d=images/``); also with a host in front, and URL-encoded."""
    parsed = urlparse(ref)
    for prefix in local_prefixes:
        p = urlparse(prefix)
        if parsed.path.rstrip("/") != p.path.rstrip("/"):
            continue
        if p.query:
            want = parse_qs(p.query).get("d", [""])[0]
            got = parse_qs(parsed.query).get("d", [""])[0]
        else:
            want, got = "", unquote(parsed.path[len(p.path) :])
        if got.startswith(want) and (m := _EXPORTED_NAME.fullmatch(got[len(want) :])):
            return int(m.group(1))
    return None


def label_studio(ctx: Context) -> LabelStudioImages | None:
    """The fetcher for the configured Label Studio (``HAZARDLENS_LABEL_STUDIO_URL`` and
    ``HAZARDLENS_LABEL_STUDIO_TOKEN``), None when either is unset."""
    s = ctx.settings
    return label_studio_images(s.labelstudio_url, s.labelstudio_token, s.max_upload_bytes)


def _image_bytes(
    ctx: Context,
    session: Session,
    principal: Principal,
    task: dict[str, Any],
    image_key: str,
    local_prefixes: Sequence[str],
    ls: LabelStudioImages | None = None,
) -> bytes | str:
    """The task's image bytes, or the Label Studio path to fetch them from (fetched by the caller,
    after the catalogue session is closed)."""
    data = task.get("data") or {}
    if not isinstance(data, dict):
        raise Invalid("task 'data' must be an object", code="invalid_task")
    ref = data.get(image_key, data.get("image"))
    if isinstance(ref, str) and ref.startswith("data:") and data.get("sample_id") is None:
        if "," not in ref:
            raise Invalid("the task's data: URI has no data", code="invalid_task")
        try:
            return base64.b64decode(ref.split(",", 1)[1], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Invalid("the task's data: URI is not valid base64", code="invalid_task") from exc
    try:
        sample_id = task_sample_id(task, image_key, local_prefixes)
    except Invalid as exc:
        if exc.code == "unresolvable_image" and ls is not None and (path := ls.path_of(ref)) is not None:
            return path
        raise
    sample = get_sample(session, principal, sample_id)
    return ctx.store.get(blob_key(sample.sha256))


def task_sample_id(
    task: Mapping[str, Any], image_key: str = "image", local_prefixes: Sequence[str] = (LABELSTUDIO_PREFIX,)
) -> int:
    """The library sample a Label Studio task shows: ``data.sample_id``, else its image URL (ours,
    or the export's local-files URL under one of ``local_prefixes``)."""
    data = task.get("data")
    if not isinstance(data, dict):
        raise Invalid("task 'data' must be an object", code="invalid_task")
    sample_id = data.get("sample_id")
    if sample_id is not None:
        if (
            isinstance(sample_id, bool)
            or not isinstance(sample_id, int | str)
            or not str(sample_id).isdigit()
            or len(str(sample_id)) > 16
        ):
            raise Invalid(f"task {task.get('id')}: sample_id must be a number", code="invalid_task")
        return int(sample_id)
    ref = data.get(image_key, data.get("image"))
    if isinstance(ref, str) and len(ref) <= 4096:
        if match := _SAMPLE_URL.search(ref):
            return int(match.group(1))
        if (found := _exported_sample(ref, local_prefixes)) is not None:
            return found
    raise Invalid(
        f"task {task.get('id')}: give data.sample_id, a /v1/samples/<id>/image URL, an exported "
        "local-files URL or a data: URI; a file uploaded into Label Studio (/data/upload/...) or in "
        "its local-files storage is fetched from Label Studio only when HAZARDLENS_LABEL_STUDIO_URL "
        "and HAZARDLENS_LABEL_STUDIO_TOKEN are set, and no other URL is ever fetched",
        code="unresolvable_image",
    )


# --- predict -------------------------------------------------------------------------------------


def _prediction(
    ctx: Context, detector: Detector, data: bytes, config: LabelConfig, conf: float, version: str | None
) -> dict[str, Any]:
    result = detect_relevant(ctx, detector, data, conf=conf, version=version)
    (width, height) = result.image_size
    boxes: list[Box] = []
    for b in result.detections.to_boxes():
        label = config.label_of(b.class_key)
        if label is not None:  # a class the project does not declare would show nothing there
            boxes.append(Box(label, b.x1, b.y1, b.x2, b.y2, b.confidence))
    items, _ = labelstudio_results(boxes, width, height, config.from_name, config.to_name, "p")
    scores = [b.confidence for b in boxes if b.confidence is not None]
    score = float(sum(scores) / len(scores)) if scores else 0.0
    return {"result": items, "score": score, "model_version": result.version}


def predict_tasks(
    ctx: Context,
    principal: Principal,
    tasks: list[dict[str, Any]],
    detector: Detector,
    *,
    conf: float = DEFAULT_CONF,
    version: str | None = None,
    label_config: str | LabelConfig | None = None,
    local_prefixes: Sequence[str] = (LABELSTUDIO_PREFIX,),
) -> dict[str, Any]:
    """Answer Label Studio's /predict: one prediction (results in percent coordinates) per task, in
    task order, however many tasks (worked through :data:`CHUNK` at a time).

    Images of a chunk are resolved in one short catalogue session; files that live in Label Studio
    are fetched from it after that session, and inference runs after both, holding no lock."""
    principal.require("suggestions:request")
    if not isinstance(tasks, list) or not tasks:
        raise Invalid("'tasks' must be a non-empty list", code="invalid_request")
    if not all(isinstance(task, dict) for task in tasks):
        raise Invalid("each task must be an object", code="invalid_task")
    config = (
        label_config
        if isinstance(label_config, LabelConfig)
        else parse_label_config(label_config, detection_taxonomy(ctx))
    )
    ls = label_studio(ctx)
    results: list[dict[str, Any]] = []
    for start in range(0, len(tasks), CHUNK):
        chunk = tasks[start : start + CHUNK]
        with ctx.db.read_session() as session:  # reads the store too: never under the write lock
            refs = [_image_bytes(ctx, session, principal, task, config.image_key, local_prefixes, ls) for task in chunk]
        if ls is not None and any(isinstance(ref, str) for ref in refs):
            with ls.client() as client:
                refs = [ls.fetch(ref, client) if isinstance(ref, str) else ref for ref in refs]
        images = [ref for ref in refs if isinstance(ref, bytes)]
        results.extend(_prediction(ctx, detector, data, config, conf, version) for data in images)
    return {"results": results}


# --- webhook -------------------------------------------------------------------------------------


@dataclass
class WebhookOutcome:
    status: str  # stored | unchanged | ignored
    sample_id: int | None = None
    revision_id: int | None = None
    revision_number: int | None = None
    reason: str | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "sample_id": self.sample_id,
            "revision_id": self.revision_id,
            "revision_number": self.revision_number,
            "reason": self.reason,
            "problems": list(self.problems),
        }


def _same_boxes(rev: AnnotationRevision | None, boxes: list[Box]) -> bool:
    if rev is None:
        return False

    def key(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((str(b["class_key"]), *(round(float(b[k]), 2) for k in ("x1", "y1", "x2", "y2"))) for b in items)

    return key(list(rev.boxes)) == key([b.as_dict() for b in boxes])


def receive_webhook(
    ctx: Context, principal: Principal, body: Mapping[str, Any], local_prefixes: Sequence[str] = (LABELSTUDIO_PREFIX,)
) -> WebhookOutcome:
    """Store a Label Studio annotation (``ANNOTATION_CREATED``/``UPDATED``) as a submitted revision of
    the task's sample, authored by the caller (the API key Label Studio's webhook sends). Every other
    event is acknowledged and ignored. The same rules as any label write: only the owning
    organisation's samples (404 invisible, 403 ``not_owner``), boxes checked against the image and
    the taxonomy, and a label that names no class refuses the annotation (422) rather than storing a
    revision that silently lacks that object. An annotation equal to the current revision (Label
    Studio sends an update per save) writes nothing."""
    action = body.get("action")
    if action not in WEBHOOK_ACTIONS:
        return WebhookOutcome("ignored", reason=f"event {str(action)[:40]!r} is not an annotation being saved")
    principal.require("annotations:write")
    annotation, task = body.get("annotation"), body.get("task")
    if not isinstance(annotation, dict) or not isinstance(task, dict):
        raise Invalid("an annotation event carries 'annotation' and 'task' objects", code="invalid_task")
    if annotation.get("was_cancelled"):
        return WebhookOutcome("ignored", reason="the annotation was skipped (cancelled) in Label Studio")
    taxonomy = ctx.taxonomy()
    project = body.get("project")
    config_xml = project.get("label_config") if isinstance(project, dict) else None
    config = parse_label_config(config_xml if isinstance(config_xml, str) else None, taxonomy)
    try:
        sample_id = task_sample_id(task, config.image_key, local_prefixes)
    except Invalid as exc:
        if exc.code != "unresolvable_image":
            raise
        raise Invalid(
            f"task {str(task.get('id'))[:20]} shows no hazardlens sample (give data.sample_id, a "
            "/v1/samples/<id>/image URL or an exported local-files URL): annotations come back only "
            "for images of the library; a file uploaded into Label Studio is not one",
            code="unresolvable_image",
        ) from exc
    with ctx.db.session() as session:
        sample = get_sample(session, principal, sample_id)
        found, problems = result_boxes(annotation.get("result", []), sample.width, sample.height)
        if problems:
            raise Invalid(
                f"the annotation holds results that are not boxes: {'; '.join(problems[:10])}",
                code="invalid_boxes",
                details={"problems": problems[:100]},
            )
        unknown = sorted({label for label, _ in found if config.class_of(label, taxonomy) is None})
        if unknown:
            raise Invalid(
                f"labels that name no hazardlens class: {', '.join(unknown)}; map them in the "
                "project's label config (a class key, or its Chinese or English name)",
                code="unknown_class",
                details={"unknown_labels": unknown},
            )
        boxes = [Box(str(config.class_of(label, taxonomy)), *corners) for label, corners in found]
        current = session.get(AnnotationRevision, sample.current_revision_id) if sample.current_revision_id else None
        if sample.annotation_status == "submitted" and _same_boxes(current, boxes):
            return WebhookOutcome(
                "unchanged", sample.id, current.id if current else None, current.number if current else None
            )
        note = f"Label Studio annotation {str(annotation.get('id'))[:20]} of task {str(task.get('id'))[:20]} ({action})"
        rev = save_revision(ctx, session, principal, sample.id, boxes, source="manual", status="submitted", note=note)
        return WebhookOutcome("stored", sample.id, rev.id, rev.number)


__all__ = [
    "CHUNK",
    "WEBHOOK_ACTIONS",
    "LabelConfig",
    "WebhookOutcome",
    "parse_label_config",
    "predict_tasks",
    "receive_webhook",
    "task_sample_id",
]
