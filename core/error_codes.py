"""Every error code hazardlens answers with, in one table: code -> HTTP status(es) and meaning.

Errors reach callers in one shape, ``{"error": {"code", "message", "details"}}`` (API) or
``error (code): message`` (CLI); the message is for people, the code for programs. A code is a
promise to the systems built against the API, so it is registered here before it is raised:
``tests/test_error_codes.py`` scans the source and fails on a code that is raised but missing from
this table (or raised with a status the table does not give it), and on an entry nothing uses.

``python -m hazardlens.error_codes [PATH]`` writes the table as Markdown (``docs/error-codes.md``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ErrorCode:
    statuses: tuple[int, ...]  # the HTTP status(es) it is answered with
    meaning: str


def _c(status: int | tuple[int, ...], meaning: str) -> ErrorCode:
    return ErrorCode(status if isinstance(status, tuple) else (status,), meaning)


ERROR_CODES: dict[str, ErrorCode] = {
    # -- generic: the defaults of the HazardError classes and of the HTTP layer --------------------
    "bad_request": _c(400, "the request cannot be understood (HazardError's default)"),
    "unauthorized": _c(401, "no valid credentials (Unauthorized's default)"),
    "forbidden": _c(403, "the caller's role or organisation may not do this"),
    "not_found": _c(404, "no such resource, or not visible to the caller's organisation"),
    "method_not_allowed": _c(405, "the path does not take this HTTP method"),
    "body_timeout": _c(408, "the request body stalled"),
    "conflict": _c(409, "conflicts with the current state (Conflict's default)"),
    "too_large": _c(413, "request body, file or image over a limit (TooLarge's default)"),
    "unsupported_media_type": _c(415, "not a supported media type (UnsupportedMedia's default)"),
    "invalid": _c(422, "the request or a value in it is invalid (Invalid's default)"),
    "out_of_range": _c(422, "a number in the request is beyond what the catalogue can hold"),
    "too_many_requests": _c(429, "rate limit reached; retry later"),
    "internal": _c(500, "unexpected server error; the X-Request-ID header identifies it in the log"),
    "unavailable": _c(503, "the model is shutting down"),
    "model_unavailable": _c(503, "no production model is loaded in this worker (yet)"),
    "broker_unavailable": _c(503, "the job queue's broker cannot be reached; the job was not queued"),
    "store_unavailable": _c(503, "the object store (MinIO/S3, or its disk) cannot be reached now; retry later"),
    "catalogue_unavailable": _c(503, "the catalogue database cannot be reached, is restarting or is busy; retry later"),
    "insufficient_storage": _c(507, "the disk of the object store or the catalogue is full; nothing was stored"),
    "timeout": _c(504, "the request or the inference took longer than allowed"),
    "error": _c(400, "an HTTP error status without a code of its own (answered with that status)"),
    # -- credentials and users ----------------------------------------------------------------------
    "missing_key": _c(401, "no API key sent (Authorization: Bearer <key>)"),
    "invalid_key": _c((401, 422), "the API key is not valid (401); an object key is malformed (422, object store)"),
    "revoked_key": _c(401, "the API key has been revoked"),
    "expired_key": _c(401, "the API key has expired"),
    "unknown_key": _c(422, "no API key with this prefix"),
    "invalid_org": _c(422, "an organisation code is not a numeric region code"),
    "invalid_role": _c(422, "unknown user role"),
    "role_mismatch": _c(422, "the user exists with another role"),
    "unknown_user": _c(404, "no user of that name in the organisation"),
    "invalid_assignee": _c(422, "the user's role cannot label"),
    "not_owner": _c(403, "only the owning organisation may do this to the sample"),
    "system_only": _c(403, "only an administrator of the system organisation (HAZARDLENS_SYSTEM_ORG) may do this"),
    "own_work": _c(403, "a reviewer cannot review their own revision"),
    # -- uploads and images ---------------------------------------------------------------------------
    "file_too_large": _c(413, "a file is over the upload limit"),
    "too_many_pixels": _c(413, "an image is over the pixel limit (decompression bomb guard)"),
    "archive_too_large": _c(413, "an archive has too many entries or unpacks to too much"),
    "empty_file": _c(422, "the file is empty"),
    "truncated_image": _c(422, "the file starts like an image but cannot be decoded (truncated or corrupt)"),
    "unsupported_format": _c(415, "not an image format the library keeps (JPEG, PNG, WebP, HEIC)"),
    "not_an_image": _c(415, "an upload that is not an image (e.g. a zip sent to the image route)"),
    "bad_archive": _c(422, "not a readable zip archive"),
    "unsafe_path": _c(422, "an archive entry would land outside its folder (zip slip)"),
    "encrypted": _c(422, "an archive entry is encrypted"),
    "no_files": _c(422, "no file sent"),
    "too_many_files": _c(422, "more files than a batch takes"),
    "bad_stream": _c(422, "a stream the object store cannot read"),
    "short_stream": _c(422, "a stream ended before its promised size"),
    "object_not_found": _c(404, "no object under this key in the object store"),
    "key_conflict": _c(409, "an object key collides with an existing object"),
    # -- samples, metadata and search -----------------------------------------------------------------
    "invalid_meta": _c(422, "sample metadata too long or too many tags"),
    "unknown_sector": _c(422, "no such sector in the taxonomy"),
    "invalid_scope": _c(422, "scope is not private or shared"),
    "invalid_source": _c(422, "sample source is not inspection, import or feedback"),
    "invalid_date": _c(422, "not an ISO date or date-time"),
    "invalid_filter": _c(422, "unknown or malformed sample filter"),
    "invalid_cursor": _c(422, "a page cursor this service did not hand out"),
    "invalid_limit": _c(422, "page size out of range"),
    # -- taxonomy and rules ---------------------------------------------------------------------------
    "invalid_taxonomy": _c(422, "the taxonomy file has problems (all listed)"),
    "invalid_rules": _c(422, "the derived-finding rules file has problems (all listed)"),
    "inactive_class": _c(422, "a hazard class not approved in legal review"),
    "unknown_item": _c(422, "no such inspection item"),
    "unknown_class": _c(422, "a class the taxonomy does not have"),
    "unknown_classes": _c(422, "a class map names classes the taxonomy cannot use"),
    "missing_legal_clause": _c(422, "a provincial item or class proposed without its legal clause (text and citation)"),
    "duplicate_addition": _c(409, "an item or class with this key was already proposed"),
    # -- annotation and review ------------------------------------------------------------------------
    "invalid_boxes": _c(422, "boxes are malformed or outside the image"),
    "invalid_note": _c(422, "a revision note is too long"),
    "invalid_unlabeled_classes": _c(422, "unlabeled_classes is not a short list of class keys"),
    "invalid_transition": _c(409, "the review workflow does not allow this step from the sample's state"),
    "reason_required": _c(422, "a rejection needs a reason"),
    "reason_too_long": _c(422, "the rejection reason is too long"),
    "invalid_request": _c(422, "a request without the items it must name"),
    "invalid_task": _c(422, "a Label Studio task is malformed"),
    "unresolvable_image": _c(422, "a Label Studio task names no image hazardlens can find"),
    "labelstudio_unavailable": _c(
        503, "the configured Label Studio cannot be reached or refuses its token (fetching a task's image)"
    ),
    # -- inspections and findings ---------------------------------------------------------------------
    "invalid_record_no": _c(422, "an inspection record number is malformed"),
    "record_not_found": _c(404, "no such inspection record"),
    "rule_inputs_not_found": _c(404, "the evaluation folder holds no saved rule inputs (rule_inputs.json)"),
    "finding_not_found": _c(404, "no such finding"),
    "already_reviewed": _c(409, "the finding (or taxonomy addition) was already confirmed or rejected"),
    "invalid_decision": _c(422, "a finding (or legal review) decision other than confirm/approve or reject"),
    "invalid_review": _c(422, "a review that contradicts its decision"),
    "invalid_idempotency_key": _c(422, "the Idempotency-Key header is malformed"),
    "idempotency_key_reused": _c(422, "the Idempotency-Key was used for a different request"),
    "report_font_missing": _c(503, "no font with Chinese glyphs is installed: the printable record cannot be made"),
    "too_many_rows": _c(422, "more findings in the period than one request counts; choose a shorter period"),
    "invalid_webhook_url": _c(422, "a webhook URL that is not http(s), too long, or carries credentials or a fragment"),
    "invalid_webhook_events": _c(422, "webhook events other than inspection.findings and inspection.failed"),
    "too_many_webhooks": _c(409, "the organisation already has the most webhooks it may register"),
    "webhook_not_found": _c(404, "no such webhook in the caller's organisation"),
    "submission_not_found": _c(404, "no such asynchronous inspection photo in the caller's organisation"),
    # -- labelled dataset import and export -----------------------------------------------------------
    "invalid_format": _c(422, "not a dataset format hazardlens reads or writes"),
    "invalid_class_map": _c(422, "the class map is not valid YAML or not a shipped name"),
    "unknown_class_map": _c(404, "no shipped class map of that name"),
    "unmapped_classes": _c(422, "source class names without a mapping; nothing was imported"),
    "invalid_regex": _c(422, "a camera or site regex that RE2 does not compile, or over 200 characters"),
    "invalid_yaml": _c(
        422,
        "user YAML (class map, data.yaml) too large, with aliases, too deep, or with names that are not short scalars",
    ),
    "images_required": _c(422, "the format needs the images folder"),
    "no_annotations": _c(422, "the archive holds no annotation file"),
    "ambiguous_annotations": _c(422, "the archive holds several annotation files"),
    "size_mismatch": _c((409, 422), "image size differs from the labels' (422) or from the manifest's (409)"),
    "not_empty": _c(409, "the export folder is not empty"),
    "nothing_to_export": _c(422, "no visible sample matches the export"),
    "empty_source": _c(422, "no readable images in the source folder"),
    # -- dataset versions ---------------------------------------------------------------------------
    "invalid_name": _c(422, "a dataset name with characters it may not hold"),
    "invalid_classes": _c(422, "an empty or unknown class list"),
    "invalid_ratios": _c(422, "split ratios that are not three fractions summing to 1"),
    "invalid_seed": _c(422, "a split seed that is not an integer"),
    "invalid_group_by": _c(
        422, "group_by is not camera, site or enterprise (dataset splits), or not 1-3 figure dimensions (stats)"
    ),
    "invalid_version": _c(422, "not a version reference (latest, a number, or 4+ hex digits)"),
    "dataset_not_found": _c(404, "no such dataset (visible to the caller)"),
    "ambiguous_dataset": _c(409, "the dataset name exists in several organisations"),
    "ambiguous_version": _c(409, "the version prefix matches several versions"),
    "manifest_mismatch": _c(409, "a stored manifest was altered"),
    "blob_corrupt": _c(409, "a stored image does not match its hash"),
    "invalid_caps": _c(422, "train caps that are not class -> non-negative count"),
    "invalid_augment": _c(422, "the augmentation pipeline file is invalid"),
    "write_failed": _c(422, "an augmentation preview could not be written"),
    # -- training and evaluation -----------------------------------------------------------------------
    "invalid_config": _c(422, "the training config has problems (all listed, with the file)"),
    "invalid_job": _c(422, "unknown job kind or parameters"),
    "invalid_status": _c(422, "unknown job status"),
    "job_not_found": _c(404, "no such job"),
    "invalid_run_id": _c(422, "a run id with characters it may not hold"),
    "run_exists": _c(409, "a training run of that id exists"),
    "run_not_found": _c(404, "no such training run"),
    "run_finished": _c(409, "the run to resume already finished"),
    "nothing_to_resume": _c(409, "no unfinished run of this dataset and config"),
    "no_checkpoint": _c(409, "the run saved no checkpoint to resume from"),
    "no_gpu": _c(422, "CUDA requested but no GPU is visible"),
    "empty_dataset": _c(422, "the dataset version has no classes"),
    "empty_split": _c(422, "the dataset version lacks train or val images"),
    "classes_dropped": _c(422, "expanding a model's classes would drop classes it knows"),
    "not_a_branch": _c(
        422, "a fine-tune that cannot be grafted onto its start model: its trunk moved, or none is left"
    ),
    "invalid_repeat": _c(422, "train_repeat names classes the dataset lacks"),
    "materialise_failed": _c(422, "the YOLO export of a version produced no data.yaml"),
    "materialise_mismatch": _c(422, "the materialised split disagrees with the version"),
    "unknown_split": _c(422, "the dataset version has no such split"),
    "invalid_model_ref": _c(422, "not a model reference (NAME:VERSION, production, or a .pt path)"),
    "incomparable_reports": _c(422, "evaluation reports of different data cannot be compared"),
    "empty_report": _c(422, "no evaluation reports to write"),
    # -- models --------------------------------------------------------------------------------------------
    "model_not_found": _c(404, "no such model version or weights file"),
    "model_retired": _c(409, "the model version is archived and not served"),
    "duplicate_model": _c(409, "these weights are already registered"),
    "duplicate_version": _c(409, "the model version exists"),
    "nothing_to_roll_back": _c(409, "no earlier production version to roll back to"),
    "last_production": _c(409, "the only production version cannot leave production without a replacement"),
    "invalid_stage": _c(422, "unknown model stage"),
    "invalid_model_folder": _c(422, "a model folder without weights.pt and card.json"),
    "invalid_model_version": _c(422, "a model version string out of bounds"),
    "missing_weights": _c(422, "the weights file is missing"),
    "missing_classes": _c(422, "a model registered without its class list"),
    "hash_mismatch": _c(422, "weights that do not match their card's hash"),
    "export_failed": _c(500, "the ONNX export of a model failed"),
    "unknown_engine": _c(422, "an inference engine (or INT8 variant) name hazardlens does not know"),
    "overloaded": _c(503, "the model's queue is full; retry after the Retry-After header's seconds"),
    "quantization_rejected": _c(422, "the INT8 variant lost more mAP50 than allowed; recorded as refused"),
    "variant_not_found": _c(404, "the model version has no accepted INT8 variant of that kind"),
    "variant_corrupt": _c(500, "a stored INT8 variant file does not match its recorded hash"),
    "invalid_model": _c(422, "the file is not an Ultralytics YOLO detection export"),
    "too_few_calibration_images": _c(422, "too few readable images to calibrate an INT8 variant"),
    "invalid_conf": _c(422, "a confidence threshold outside 0..1"),
    "invalid_tiles": _c(422, "a sliced-inference window out of bounds"),
    # -- federation between instances (issue 17) --------------------------------------------------------
    "no_instance_key": _c(422, "this instance has no federation key pair yet (run hazardlens init)"),
    "invalid_public_key": _c(422, "not an Ed25519 public key (base64 of 32 bytes, or PEM)"),
    "invalid_peer": _c(422, "a peer name, URL or allow list out of bounds"),
    "duplicate_peer": _c(409, "a peer of that name or public key is already registered"),
    "peer_not_found": _c(404, "no peer of that name is registered"),
    "unknown_peer": _c(401, "a federation request signed by a key no registered peer has"),
    "bad_signature": _c(401, "a federation request without a signature, or one that does not match (tampered)"),
    "stale_signature": _c(401, "a federation request signed too far from this instance's clock"),
    "peer_not_allowed": _c(403, "the peer is not allowed this (samples, models, taxonomy, feedback)"),
    "invalid_feedback": _c(422, "a peer's feedback report is malformed"),
    "peer_bad_signature": _c(502, "a peer's answer is not signed by its registered key (forged or altered); unused"),
    "peer_unreachable": _c(502, "the peer instance cannot be reached"),
    "peer_refused": _c(502, "the peer answered with an error (its code and message are passed on)"),
    "not_federated": _c(404, "the sample is this instance's own, not pulled from a peer"),
    "already_adopted": _c(409, "the pulled taxonomy addition was already adopted here"),
    "addition_withdrawn": _c(409, "the pulled taxonomy addition is no longer offered by its instance"),
}


def markdown() -> str:
    """The table as the Markdown of ``docs/error-codes.md``."""
    lines = [
        "# Error codes",
        "",
        "Generated from `hazardlens.error_codes` (`python -m hazardlens.error_codes docs/error-codes.md`);",
        'do not edit by hand. Every error is answered as `{"error": {"code", "message", "details"}}`.',
        "",
        "| code | HTTP status | meaning |",
        "|---|---|---|",
    ]
    for code in sorted(ERROR_CODES):
        entry = ERROR_CODES[code]
        lines.append(f"| `{code}` | {', '.join(str(s) for s in entry.statuses)} | {entry.meaning} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args:
        Path(args[0]).write_text(markdown(), encoding="utf-8")
    else:
        sys.stdout.write(markdown())


if __name__ == "__main__":
    main()


__all__ = ["ERROR_CODES", "ErrorCode", "markdown"]
