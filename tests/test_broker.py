"""Jobs on Celery, the sending side (issue 16, item 1), against the machine's real Redis (a database
of its own, flushed before and after): with HAZARDLENS_BROKER_URL set a submitted job is one message
on its queue (cpu, or gpu for training when the deployment has GPU workers), the server runs no job
thread, and an unreachable broker fails the submission (503 broker_unavailable) instead of leaving a
job queued that nothing would ever run. The workers' side runs in tests/test_cluster.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

import hazardlens.labeling.prelabel  # noqa: F401 - registers prelabel
import hazardlens.training.jobs  # noqa: F401 - registers train and dataset_export
from hazardlens.broker import BrokerUnavailable
from hazardlens.context import Context
from hazardlens.jobs import JobRunner, queue_for
from hazardlens.orm import Job
from tests.fixtures.core import redis_or_skip
from tests.fixtures.training import TinyDataset

REDIS_URL = os.environ.get("HAZARDLENS_TEST_REDIS_SEND", "redis://127.0.0.1:6379/14")  # db 14: this file's own


@pytest.fixture
def redis_db() -> Iterator[Any]:
    client = redis_or_skip(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def _messages(client: Any, queue: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


def test_a_submitted_job_is_a_message_on_its_queue(ctx: Context, tiny_dataset: TinyDataset, redis_db: Any) -> None:
    brokered = Context(ctx.settings.with_(broker_url=REDIS_URL))
    runner = JobRunner(brokered)
    assert runner.uses_broker and not runner.start()  # workers run the jobs: no thread here
    job = runner.submit("dataset_export", {"dataset": tiny_dataset.ref}, tiny_dataset.principal)
    [message] = _messages(redis_db, "cpu")
    assert message["headers"]["task"] == "hazardlens.job"
    assert message["headers"]["argsrepr"] in (f"[{job.id}]", f"({job.id},)")
    with brokered.db.read_session() as s:
        row = s.get(Job, job.id)
        assert row.status == "queued" and row.queue == "cpu"
    brokered.close()


def test_training_goes_to_the_gpu_queue_only_when_the_deployment_has_one(ctx: Context) -> None:
    assert queue_for(ctx, "train") == "cpu"
    gpu = Context(ctx.settings.with_(gpu_queue=True))
    assert queue_for(gpu, "train") == "gpu"
    assert queue_for(gpu, "prelabel") == "cpu" and queue_for(gpu, "dataset_export") == "cpu"


def test_an_unreachable_broker_fails_the_submission(ctx: Context, tiny_dataset: TinyDataset) -> None:
    down = Context(ctx.settings.with_(broker_url="redis://127.0.0.1:1/0"))  # nothing listens on port 1
    runner = JobRunner(down)
    with pytest.raises(BrokerUnavailable) as err:
        runner.submit("dataset_export", {"dataset": tiny_dataset.ref}, tiny_dataset.principal)
    assert err.value.status == 503 and err.value.code == "broker_unavailable"
    [row] = runner.list_jobs()
    assert row.status == "failed" and row.error.startswith("broker_unavailable")
    down.close()
