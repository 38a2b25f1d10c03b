"""The real ``hazardlens`` command (its own process) against a catalogue, a store and a broker that
cannot be reached (a closed loopback port): one readable line naming the code and what could not be
reached, exit code 2, never a traceback (issue 13)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HAZARDLENS = str(Path(sys.executable).with_name("hazardlens"))


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(home: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HAZARDLENS_")}
    clean.update({"HAZARDLENS_HOME": str(home), **env})
    done = subprocess.run([HAZARDLENS, *args], env=clean, capture_output=True, text=True, timeout=180, check=False)
    return done.returncode, done.stdout + done.stderr


def _one_clear_line(out: str, code: str) -> str:
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if f"error ({code})" in ln]
    assert len(lines) == 1, out
    return lines[0]


@pytest.mark.parametrize("args", [("jobs", "list"), ("init",), ("blobs", "gc", "--dry-run"), ("serve", "--port", "0")])
def test_catalogue_unreachable(tmp_path: Path, args: tuple[str, ...]) -> None:
    port = _closed_port()
    url = f"postgresql+psycopg2://postgres:s3cret@127.0.0.1:{port}/test"
    code, out = _run(tmp_path / "home", {"HAZARDLENS_DATABASE_URL": url}, *args)
    assert code == 2, out
    line = _one_clear_line(out, "catalogue_unavailable")
    assert f"127.0.0.1:{port}" in line and "Connection refused" in line
    assert "s3cret" not in out  # the password is hidden


def test_store_unreachable(tmp_path: Path) -> None:
    port = _closed_port()
    env = {"HAZARDLENS_STORE": "minio", "HAZARDLENS_MINIO_ENDPOINT": f"127.0.0.1:{port}"}
    code, out = _run(tmp_path / "home", env, "jobs", "list")
    assert code == 2, out
    _one_clear_line(out, "store_unavailable")


def test_broker_unreachable(tmp_path: Path) -> None:
    """A job submitted with the broker down: refused with broker_unavailable (and marked failed)."""
    env = {"HAZARDLENS_BROKER_URL": f"redis://127.0.0.1:{_closed_port()}/0"}
    code, out = _run(tmp_path / "home", env, "blobs", "gc", "--dry-run")
    assert code == 2, out
    _one_clear_line(out, "broker_unavailable")
