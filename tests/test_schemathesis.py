"""The OpenAPI document is the truth: schemathesis, with every one of its checks, against a real server.

Schemathesis' own engine runs (the same as ``st run --checks all``): its examples, coverage (boundary
values, empty strings, missing fields, unexpected methods), fuzzing (positive and negative data) and
stateful (links it infers between operations: create a sample, then read, delete and read it again)
phases, each a few examples per operation, with every built-in check enabled:

not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
response_schema_conformance, negative_data_rejection, positive_data_acceptance, missing_required_header,
unsupported_method, allow_header_conformance, use_after_free, ensure_resource_availability, ignored_auth
and object_level_authorization (the last needs two identities in the config and is a no-op with one).

The engine is driven directly (not through schemathesis' pytest plugin, which does not run under
pytest 9). A client authenticates as an administrator of a real organisation, so every code path is
reachable. Every failure, error and skipped operation fails the test, all reported at once.

One check is configured, never dropped: ``positive_data_acceptance`` expects a schema-valid request to
succeed, but some valid values depend on what the database or an uploaded file holds, which no
schema can say. Those operations (``DOMAIN_STATUSES``) also expect the listed statuses for valid data;
each entry says why. Everything else is expressed in the document itself (patterns, enums, bounds).
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events
from schemathesis.engine import from_schema as engine_for

from tests.fixtures.core import auth
from tests.fixtures.serving import register

EXAMPLES = 8

#: positive_data_acceptance's defaults, plus the statuses a valid request may get for reasons outside
#: the schema. Keys are (method, path); the reason is the value's second item.
_DEFAULT_POSITIVE = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
DOMAIN_STATUSES: dict[tuple[str, str], tuple[list[str], str]] = {
    ("POST", "/v1/detect"): (["415", "413"], "the file part must be a decodable image, which no schema can say"),
    ("POST", "/v1/detect/batch"): (["415", "413"], "the file parts must be decodable images"),
    ("POST", "/v1/samples"): (["415", "413"], "the file part must be a decodable image"),
    ("POST", "/v1/inspections/{record_no}/photos"): (
        ["415", "413", "422"],
        "the file part must be a decodable "
        "image, and item_codes must name inspection items in force, "
        "provincial additions approved in the catalogue included",
    ),
    ("POST", "/v1/samples/archive"): (["422"], "the file part must be a zip archive of images (not_a_zip)"),
    ("POST", "/v1/imports"): (
        ["422"],
        "the zip must hold a dataset in the given format and the class map (a "
        "name or YAML text) must parse; neither can be said in a schema",
    ),
    ("POST", "/v1/datasets"): (["422"], "a version needs approved samples matching the filters (empty_dataset)"),
    ("POST", "/v1/exports"): (["422"], "an export needs approved samples matching the filters (nothing_to_export)"),
    ("POST", "/v1/jobs"): (
        ["422"],
        "a train job's dataset must hold the config's classes; checked against the catalogue when the job is submitted",
    ),
    ("POST", "/labelstudio/predict"): (
        ["422"],
        "a task's image must resolve to a sample the caller can see or a decodable data: URI (unresolvable_image)",
    ),
    ("POST", "/v1/suggestions/request"): (["422"], "queue=true with an empty queue names no sample (no samples)"),
    ("POST", "/v1/taxonomy/additions"): (
        ["422"],
        "the definition must be a valid item or class of the taxonomy in force (sector, items, fields) and the "
        "legal clause is the domain's to require (missing_legal_clause), so its absence is answered in the error shape",
    ),
}


def _config(key: str) -> SchemathesisConfig:
    operations = [
        {
            "include-name": f"{method} {path}",
            "checks": {"positive_data_acceptance": {"expected-statuses": _DEFAULT_POSITIVE + extra}},
        }
        for (method, path), (extra, _why) in DOMAIN_STATUSES.items()
    ]
    return SchemathesisConfig.from_dict(
        {
            "seed": 20260512,
            "workers": 1,  # hypothesis' lambda descriptions are not thread-safe (an AST recursion error with 2)
            "continue-on-failure": True,
            "headers": {"Authorization": f"Bearer {key}"},
            "request-timeout": 60,
            "generation": {"max-examples": EXAMPLES, "deterministic": True, "no-shrink": True},
            "checks": {"enabled": True},
            "operations": operations,
        }
    )


def _collect(failures: dict[tuple[str, ...], list[Any]], label: str, check: Any, interaction: Any) -> None:
    """One entry per operation, check, kind of failure and answer (status and error code), with a count."""
    failure = check.failure_info.failure
    response = interaction.response if interaction is not None else None
    status, code, body = "", "", ""
    if response is not None:
        status = str(response.status_code)
        body = response.content.decode("utf-8", "replace") if response.content else ""
        try:
            code = json.loads(body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = ""
    key = (failure.operation or label, check.name, failure.title, status, code)
    if key in failures:
        failures[key][0] += 1
    else:
        failures[key] = [1, f"{failure.message}\n[{status}] {body[:400]}\n{check.failure_info.code_sample[:1500]}"]


def _report(failures: dict[tuple[str, ...], list[Any]]) -> str:
    return "\n\n".join(
        f"{' | '.join(key)} (x{count}):\n{example}" for key, (count, example) in sorted(failures.items())
    )


def test_openapi_document_is_the_truth(ctx, serving_app, model_variants, live_server, make_key) -> None:  # type: ignore[no-untyped-def]
    register(ctx, model_variants[0], "1")
    key = make_key("420000", "admin", "fuzz-admin")
    failures: dict[tuple[str, ...], list[Any]] = {}
    errors: list[str] = []
    tested: set[str] = set()
    skipped: dict[str, str] = {}
    with live_server(serving_app()) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=_config(key), headers=auth(key))
        schema.config.update(base_url=server.url)
        labels = {op.ok().label for op in schema.get_all_operations()}
        for event in engine_for(schema).execute():
            if isinstance(event, events.ScenarioFinished):
                label = event.recorder.label
                if event.status == Status.SKIP:
                    skipped.setdefault(label, event.skip_reason or "skipped")
                elif label in labels:
                    tested.add(label)
                for case_id, checks in event.recorder.checks.items():
                    for check in checks:
                        if check.status == Status.FAILURE and check.failure_info is not None:
                            _collect(failures, label, check, event.recorder.interactions.get(case_id))
            elif isinstance(event, events.NonFatalError):
                errors.append(f"{event.label}: {event.value!r}"[:2000])
            elif isinstance(event, events.FatalError):
                errors.append(f"fatal: {event.exception!r}")
            elif isinstance(event, events.EngineFinished):
                for failure in event.failures:  # run-level checks
                    failures[(failure.operation or "run", failure.title)] = [1, failure.message]
    assert len(labels) >= 40, sorted(labels)
    assert not errors, "\n".join(errors)
    assert not failures, f"{len(failures)} kinds of failure:\n\n{_report(failures)}"
    # Nothing skipped silently: every operation in the document was exercised.
    untested = {label: skipped.get(label, "never run") for label in labels - tested}
    assert not untested, untested
