"""The typed Python client against a real uvicorn server on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from hazardlens.orm import InspectionPhoto
from hazardlens.serving.client import Box, HazardLensClient, HazardLensError
from tests.fixtures.serving import photo, register

RECORD = "鄂应急检〔2026〕3号"


@pytest.fixture
def server(ctx, serving_app, model_variants, live_server) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    register(ctx, model_variants[0], "1")
    with live_server(serving_app()) as s:
        yield s


class LoseFirstAnswer(httpx.HTTPTransport):
    """Delivers the first request, then 'loses' its answer, as a mobile network does."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        response = super().handle_request(request)
        if self.calls == 1:
            response.read()
            raise httpx.ReadTimeout("answer lost", request=request)
        return response


def test_detect_record_read_review(server, make_key) -> None:
    with HazardLensClient(server.url, make_key("420000", "service")) as hl:
        result = hl.detect(photo(seed=1), sector="general")
        assert (result.model_name, result.model_version, result.width, result.height) == ("hazardlens", "1", 160, 120)
        assert result.detections and all(isinstance(d.box, Box) for d in result.detections)
        assert {d.class_key for d in result.detections} <= {"head", "person"}

        rec = hl.record_photo(
            RECORD,
            photo(seed=2),
            enterprise_id="91420100MA4K",
            sector="general",
            inspector_id="42010001",
            item_codes=["YX-04"],
        )
        assert rec.record_no == RECORD and rec.findings and not rec.replayed and rec.idempotency_key
        assert all(f.status == "suggested" and f.class_key == "head" and f.finding for f in rec.findings)
        again = hl.record_photo(
            RECORD, photo(seed=2), enterprise_id="91420100MA4K", sector="general", idempotency_key=rec.idempotency_key
        )
        assert again.replayed and again.photo_id == rec.photo_id and again.findings == rec.findings

        inspection = hl.get_inspection(RECORD)
        assert [p.photo_id for p in inspection.photos] == [rec.photo_id]
        assert inspection.summary["suggested"] == len(rec.findings)

        confirmed = hl.review_finding(rec.findings[0].id, "confirmed", box=Box(1, 2, 30, 40))
        assert confirmed.finding.status == "confirmed" and confirmed.revision_id and confirmed.record_no == RECORD
        rejected = hl.review_finding(rec.findings[1].id, "rejected")
        assert rejected.finding.status == "rejected" and rejected.revision_id is None

        with pytest.raises(HazardLensError) as twice:
            hl.review_finding(rec.findings[0].id, "rejected")
        assert (twice.value.status, twice.value.code) == (409, "already_reviewed") and twice.value.request_id
        with pytest.raises(HazardLensError) as missing:
            hl.get_inspection("鄂应急检〔2026〕404号")
        assert (missing.value.status, missing.value.code) == (404, "record_not_found")
        with pytest.raises(HazardLensError) as bad:
            hl.detect(b"not an image")
        assert (bad.value.status, bad.value.code) == (415, "unsupported_media_type")

    with HazardLensClient(server.url, "hl_wrong_key") as anonymous, pytest.raises(HazardLensError) as denied:
        anonymous.detect(photo())
    assert (denied.value.status, denied.value.code) == (401, "invalid_key")


def test_lost_answer_is_retried_with_the_same_key(server, make_key, ctx) -> None:
    transport = LoseFirstAnswer()
    with HazardLensClient(server.url, make_key("420000", "inspector"), transport=transport, backoff_s=0.01) as hl:
        rec = hl.record_photo(RECORD, photo(seed=5), enterprise_id="E1", sector="general")
    assert transport.calls == 2 and rec.replayed
    with ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(InspectionPhoto)) == 1
