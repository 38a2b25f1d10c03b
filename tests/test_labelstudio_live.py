"""Label Studio 1.23.2 for real (issue 14), both ways, against our server on a loopback port.

Label Studio is installed from PyPI into a venv of its own (``make labelstudio``: var/ls-venv; its
pins conflict with ours) and started offline on loopback, with the two settings a same-machine ML
backend and webhook need (``ML_BLOCK_LOCAL_IP=false``, ``USE_DEFAULT_BANNED_SUBNETS=false``) and a
legacy API token enabled for its organisation. One story: a project with a label config whose tags
are not named ``label``/``image`` imports the tasks of our ``export --format labelstudio
--image-url-prefix`` plus a photo uploaded into Label Studio; our ``/labelstudio`` backend is
connected; "retrieve predictions" on all of them (more than one chunk of 64) creates a prediction
per task under the project's names (the uploaded photo fetched back from Label Studio, bounded);
an annotation saved in Label Studio reaches our webhook and becomes a submitted revision.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hazardlens.context import Context
from tests.fixtures.core import auth
from tests.fixtures.dataset_versions import ORG, add_sample, admin_principal
from tests.fixtures.serving import photo, register, wait_for

LS_VENV = Path(__file__).resolve().parents[1] / "var" / "ls-venv"
LS_BIN = LS_VENV / "bin" / "label-studio"
#: An empty database with Label Studio's migrations applied (``make labelstudio`` makes it once):
#: copied into each run's data folder, it spares the start most of its time.
LS_MIGRATED = LS_VENV / "migrated" / "label_studio.sqlite3"
#: A Label Studio already running (started as label_studio() does) instead of a fresh one, and its
#: legacy token: for working on this test without a start per run.
RUNNING_URL = os.environ.get("HAZARDLENS_TEST_LS_URL", "")
LS_TOKEN = os.environ.get("HAZARDLENS_TEST_LS_TOKEN", "5f1e0c2a9b7d4e6f8a1b3c5d7e9f0a2b4c6d8e0f")
#: The first start migrates an empty database: about 90 s on an idle machine, 15 min on a 2-core
#: machine under a training run.
START_TIMEOUT_S = float(os.environ.get("HAZARDLENS_TEST_LS_START_TIMEOUT_S", "1200"))
# The rest takes about 2.5 min on an idle machine; pytest-timeout's 600 s would cut a slow start.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(START_TIMEOUT_S) + 1200)]
SAMPLES = 70  # more than one chunk (64) of the backend
IMPORTS = 3  # the export imported three times: a 211-task "retrieve predictions" (the 200)

CONFIG = """<View>
  <Image name="photo" value="$image" zoom="true"/>
  <RectangleLabels name="hazards" toName="photo">
    <Label value="person" background="red"/>
    <Label value="Head" background="blue"/>
    <Label value="安全帽（已佩戴）" background="green"/>
  </RectangleLabels>
</View>"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def label_studio(data_dir: Path) -> Iterator[str]:
    """A Label Studio on a loopback port, offline, its process group ended on exit."""
    if RUNNING_URL:
        yield RUNNING_URL.rstrip("/")
        return
    if not LS_BIN.is_file():
        pytest.skip(f"Label Studio 1.23.2 is not installed in {LS_VENV} (run `make labelstudio`)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    if LS_MIGRATED.is_file():
        shutil.copyfile(LS_MIGRATED, data_dir / LS_MIGRATED.name)
    env = {
        **os.environ,
        "ML_BLOCK_LOCAL_IP": "false",  # our backend is on loopback
        "USE_DEFAULT_BANNED_SUBNETS": "false",  # and so is our webhook
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LATEST_VERSION_CHECK": "false",  # offline: no PyPI version check
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        # Its waits for our backend (3 s for /setup, 100 s for /predict) are sized for idle servers.
        "ML_TIMEOUT_SETUP": "60",
        "ML_TIMEOUT_PREDICT": "900",
    }
    log = (data_dir / "label-studio.log").open("wb")
    proc = subprocess.Popen(
        [
            str(LS_BIN),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",  # loopback only (its default is 0.0.0.0)
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--username",
            "curator@hazardlens.test",
            "--password",
            "hazardlens-test-password",
            "--user-token",
            LS_TOKEN,
            "--enable-legacy-api-token",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=data_dir,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"Label Studio exited ({proc.returncode}): {_tail(data_dir)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"Label Studio did not answer in {START_TIMEOUT_S:.0f} s: {_tail(data_dir)}")
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def _tail(data_dir: Path) -> str:
    return (data_dir / "label-studio.log").read_text(encoding="utf-8", errors="replace")[-3000:]


def test_label_studio_both_ways(
    ctx: Context,
    tmp_path: Path,
    serving_app: Callable[..., Any],
    live_server: Callable[..., Any],
    make_key: Callable[..., str],
    model_variants: list[Path],
) -> None:
    from hazardlens.errors import TooLarge
    from hazardlens.labeling.exporters import export_library
    from hazardlens.labeling.ls_images import LabelStudioImages, LabelStudioUnavailable

    register(ctx, model_variants[0], "1")
    principal = admin_principal(ctx)
    ids = [add_sample(ctx, principal, seed=i, data=photo(seed=i), boxes=[]) for i in range(SAMPLES)]
    key = make_key(ORG, "curator", "ls-live")
    ls_dir = tmp_path / "label-studio"
    ls_dir.mkdir()
    # The first /setup loads (exports) the model: more than the default 60 s on a busy machine.
    ctx.settings = ctx.settings.with_(request_timeout_s=900.0)

    with label_studio(ls_dir) as ls_url, live_server(serving_app()) as hl:
        # The backend fetches files uploaded into Label Studio from this Label Studio only.
        ctx.settings = ctx.settings.with_(labelstudio_url=ls_url, labelstudio_token=LS_TOKEN)
        with ctx.db.session() as s:
            export = export_library(
                ctx, s, principal, "labelstudio", tmp_path / "ls-export", sample_url_prefix=f"{hl.url}/v1/samples/"
            )
        tasks = httpx.Client(base_url=ls_url, headers={"Authorization": f"Token {LS_TOKEN}"}, timeout=120)

        r = tasks.post("/api/projects/", json={"title": "hazardlens interop", "label_config": CONFIG})
        assert r.status_code == 201, r.text
        project = r.json()["id"]
        for _ in range(IMPORTS):
            r = tasks.post(
                f"/api/projects/{project}/import",
                content=export.path.read_bytes(),
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 201 and r.json()["task_count"] == SAMPLES, r.text
        uploaded = photo(seed=3)
        r = tasks.post(f"/api/projects/{project}/import", files={"file": ("upload.jpg", uploaded, "image/jpeg")})
        assert r.status_code == 201 and r.json()["task_count"] == 1, r.text
        listed = tasks.get("/api/tasks/", params={"project": project, "page_size": 1000, "fields": "all"}).json()
        all_tasks = listed["tasks"] if isinstance(listed, dict) else listed
        assert len(all_tasks) == SAMPLES * IMPORTS + 1
        upload_task = next(t for t in all_tasks if "sample_id" not in t["data"])
        upload_path = upload_task["data"]["image"]
        assert "/data/upload/" in upload_path
        by_sample = {t["data"]["sample_id"]: t for t in all_tasks if "sample_id" in t["data"]}
        assert sorted(by_sample) == ids
        assert sorted(t["data"]["sample_id"] for t in all_tasks if "sample_id" in t["data"]) == sorted(ids * IMPORTS)

        # Our ML backend, connected as a user would (basic auth, the password a hazardlens key).
        # Label Studio gives /setup 3 s by default: the worker loads its model first (as a running
        # server has).
        warm = httpx.post(
            f"{hl.url}/labelstudio/setup", json={"project": project}, auth=("labelstudio", key), timeout=900
        )
        assert warm.status_code == 200, warm.text
        r = tasks.post(
            "/api/ml/",
            json={
                "url": f"{hl.url}/labelstudio",
                "project": project,
                "title": "hazardlens",
                "auth_method": "BASIC_AUTH",
                "basic_auth_user": "labelstudio",
                "basic_auth_pass": key,
                "is_interactive": False,
            },
        )
        assert r.status_code == 201, r.text
        backend = r.json()["id"]
        assert tasks.get(f"/api/ml/{backend}").json()["state"] == "CO", "Label Studio reached /health and /setup"

        # "Retrieve predictions" on every task at once: one /predict call with 211 tasks.
        r = tasks.post(
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project},
            json={"selectedItems": {"all": True, "excluded": []}},
            timeout=1000,  # Label Studio waits for our answer (up to its ML_TIMEOUT_PREDICT) before its own
        )
        assert r.status_code == 200, r.text
        predictions = tasks.get("/api/predictions/", params={"project": project}).json()
        assert len(predictions) == SAMPLES * IMPORTS + 1, f"{len(predictions)} predictions: {r.text}"
        assert {p["model_version"] for p in predictions} == {"1"}
        results = [res for p in predictions for res in p["result"]]
        assert results, "the tiny model finds people and heads in these photos"
        for res in results:
            assert (res["from_name"], res["to_name"], res["type"]) == ("hazards", "photo", "rectanglelabels")
            assert res["value"]["rectanglelabels"][0] in ("person", "Head")
        by_task = {p["task"]: p["result"] for p in predictions}
        # In task order across the chunks: every copy of a sample's task got that sample's prediction,
        # and the photos differ (so a shifted answer would show).
        for t in all_tasks:
            if "sample_id" in t["data"]:
                assert by_task[t["id"]] == by_task[by_sample[t["data"]["sample_id"]]["id"]]
        assert len({str(by_task[by_sample[i]["id"]]) for i in ids}) > 1
        # The uploaded photo was fetched back from Label Studio: its prediction is the one of the
        # library sample with the same bytes.
        assert by_task[upload_task["id"]] == by_task[by_sample[ids[3]]["id"]]

        # Fetches are bounded: the same upload over a 100-byte limit is refused.
        small = LabelStudioImages(ls_url, LS_TOKEN, max_bytes=100)
        path = small.path_of(upload_path)
        assert path is not None
        with small.client() as client, pytest.raises(TooLarge):
            small.fetch(path, client)
        fetched = LabelStudioImages(ls_url, LS_TOKEN, max_bytes=1 << 20)
        with fetched.client() as client:
            assert fetched.fetch(path, client) == uploaded
        # A personal access token works too (exchanged for an access token); a wrong token is a 503.
        r = tasks.post("/api/token/")
        if not RUNNING_URL:  # a reused Label Studio may hold its one token already (409)
            assert r.status_code in (200, 201), r.text
        if r.status_code in (200, 201):
            personal = LabelStudioImages(ls_url, r.json()["token"], max_bytes=1 << 20)
            with personal.client() as client:
                assert personal.fetch(path, client) == uploaded
        wrong = LabelStudioImages(ls_url, "0" * 40, max_bytes=1 << 20)
        with wrong.client() as client, pytest.raises(LabelStudioUnavailable):
            wrong.fetch(path, client)

        # Annotations come back through the webhook as submitted revisions authored by the key's user.
        r = tasks.post(
            "/api/webhooks/",
            json={
                "project": project,
                "url": f"{hl.url}/labelstudio/webhook",
                "send_payload": True,
                "send_for_all_actions": False,
                "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"],
                "headers": {"Authorization": f"Bearer {key}"},
                "is_active": True,
            },
        )
        assert r.status_code == 201, r.text
        sample = ids[5]
        rect = {
            "from_name": "hazards",
            "to_name": "photo",
            "type": "rectanglelabels",
            "original_width": 160,
            "original_height": 120,
            "image_rotation": 0,
            "value": {"x": 10, "y": 20, "width": 25, "height": 50, "rotation": 0, "rectanglelabels": ["Head"]},
        }
        r = tasks.post(f"/api/tasks/{by_sample[sample]['id']}/annotations/", json={"result": [rect]})
        assert r.status_code == 201, r.text

        def revision() -> dict[str, Any]:
            return httpx.get(f"{hl.url}/v1/samples/{sample}/annotations", headers=auth(key), timeout=10).json()

        assert wait_for(lambda: revision().get("status") == "submitted", timeout=60), revision()
        state = revision()
        assert state["revision"]["author"] == "ls-live" and state["revision"]["source"] == "manual"
        [box] = state["boxes"]
        assert box["class_key"] == "head"
        assert (box["x1"], box["y1"], box["x2"], box["y2"]) == pytest.approx((16, 24, 56, 84))
        tasks.close()
