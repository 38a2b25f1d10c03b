"""The package as installed, not as checked out: configs are package data read through
``hazardlens.settings.config_path`` (``HAZARDLENS_CONFIG_DIR`` wins), every package folder is listed in
pyproject.toml, and (slow) a wheel of the checkout installed non-editable starts and detects from a
folder outside the repository."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from hazardlens.errors import NotFound
from hazardlens.labeling.importers import resolve_class_map
from hazardlens.settings import (
    CONFIG_DIR_ENV,
    Settings,
    config_files,
    config_path,
    find_config_file,
    shipped_configs,
)

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


# ---- configs through one helper --------------------------------------------------------------------


def test_shipped_configs_are_the_repository_folder_in_a_checkout(monkeypatch) -> None:
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    assert shipped_configs() == ROOT / "configs"
    assert config_path("taxonomy.yaml") == ROOT / "configs" / "taxonomy.yaml"
    assert Settings().taxonomy_path == ROOT / "configs" / "taxonomy.yaml"
    assert {"sfchd", "fire_smoke"} <= set(config_files("class_maps"))
    with pytest.raises(ValueError):
        config_path("../pyproject.toml")


def test_override_folder_wins_file_by_file(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "class_maps").mkdir()
    (tmp_path / "taxonomy.yaml").write_text("version: x\n", encoding="utf-8")
    (tmp_path / "class_maps" / "sfchd.yaml").write_text("mapping: {hat: helmet}\n", encoding="utf-8")
    (tmp_path / "class_maps" / "site_cams.yaml").write_text("mapping: {fire: fire}\n", encoding="utf-8")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))

    assert config_path("taxonomy.yaml") == tmp_path / "taxonomy.yaml"
    assert Settings().taxonomy_path == tmp_path / "taxonomy.yaml"
    assert config_path("augment/inspection.yaml") == shipped_configs() / "augment" / "inspection.yaml"
    maps = config_files("class_maps")
    assert maps["sfchd"] == tmp_path / "class_maps" / "sfchd.yaml"
    assert maps["fire_smoke"] == shipped_configs() / "class_maps" / "fire_smoke.yaml"
    assert maps["site_cams"] == tmp_path / "class_maps" / "site_cams.yaml"
    assert resolve_class_map("site_cams").mapping == {"fire": "fire"}
    assert resolve_class_map("sfchd.yaml").mapping == {"hat": "helmet"}


def test_repository_relative_names_work_from_anywhere(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    inspection = shipped_configs() / "augment" / "inspection.yaml"
    assert find_config_file("configs/augment/inspection.yaml") == inspection
    assert find_config_file("augment/inspection.yaml") == inspection
    assert find_config_file("configs/augment/missing.yaml") is None
    assert find_config_file("configs/../pyproject.toml") is None
    (tmp_path / "configs" / "augment").mkdir(parents=True)
    (tmp_path / "configs" / "augment" / "inspection.yaml").write_text("{}\n", encoding="utf-8")
    assert find_config_file("configs/augment/inspection.yaml") == tmp_path / "configs/augment/inspection.yaml"

    sfchd = resolve_class_map(ROOT / "configs" / "class_maps" / "sfchd.yaml")
    assert resolve_class_map(Path("sfchd")).mapping == sfchd.mapping  # --class-map sfchd
    assert resolve_class_map(Path("configs/class_maps/sfchd.yaml")).mapping == sfchd.mapping
    with pytest.raises(NotFound):
        resolve_class_map("no_such_map")


def test_training_configs_resolve_their_relative_paths_outside_the_checkout(tmp_path: Path, monkeypatch) -> None:
    from hazardlens.training.config import load_config

    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    config = load_config("configs/train/baseline.yaml")  # augment: configs/augment/inspection.yaml
    assert config.augment == shipped_configs() / "augment" / "inspection.yaml"


def test_training_job_configs_include_the_override(tmp_path: Path, monkeypatch) -> None:
    from hazardlens.context import Context
    from hazardlens.training.jobs import _config_path

    (tmp_path / "cfg" / "train").mkdir(parents=True)
    (tmp_path / "cfg" / "train" / "site.yaml").write_text("model: yolo11n.yaml\n", encoding="utf-8")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "cfg"))
    ctx = Context(Settings(home=tmp_path / "home"))
    assert _config_path(ctx, "site") == tmp_path / "cfg" / "train" / "site.yaml"
    assert _config_path(ctx, "tiny") == shipped_configs() / "train" / "tiny.yaml"


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """A package folder missing from ``[tool.setuptools] packages`` works in the editable checkout and
    is silently left out of the wheel."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    package_dir = PYPROJECT["tool"]["setuptools"]["package-dir"]
    found = set()
    for package, folder in package_dir.items():  # the mapped folders are siblings at the root
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join([package, *init.parent.relative_to(ROOT / folder).parts]))
    assert sorted(found - listed) == []
    assert sorted(listed - found) == []


# ---- the real thing: a wheel, installed non-editable, run outside the repository -------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _checkout_copy(dest: Path) -> Path:
    """The working tree as git sees it (tracked and untracked, not ignored), so the build neither
    writes into the checkout nor picks up build/, var/ or the venv."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.mark.slow
def test_wheel_installs_and_serves_outside_the_checkout(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    python = sys.executable
    src = _checkout_copy(tmp_path / "src")
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("hazardlens-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )

    override = tmp_path / "override"
    override.mkdir()
    taxonomy = (ROOT / "configs" / "taxonomy.yaml").read_text(encoding="utf-8")
    assert 'version: "2024.1"' in taxonomy
    (override / "taxonomy.yaml").write_text(
        taxonomy.replace('version: "2024.1"', 'version: "override-test"'), encoding="utf-8"
    )
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    # The venv's editable finder would still answer for a module the wheel lacks (it maps hazardlens.*
    # to the checkout): switch it off in the children, so a module left out of the wheel fails here.
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not str(f.__module__).startswith('__editable__')]\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAZARDLENS_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(guard), str(site)]),
        HAZARDLENS_HOME=str(tmp_path / "home"),
        YOLO_OFFLINE="1",
        YOLO_CONFIG_DIR=str(tmp_path / "yolo"),
    )
    cli = [python, str(site / "bin" / "hazardlens")]

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*args], cwd=cwd, env={**env, **extra}, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    probe = (
        "import sys, hazardlens, hazardlens.formats, hazardlens.settings as s; print(hazardlens.__file__); "
        "print(s.shipped_configs()); print(s.config_path('taxonomy.yaml')); "
        "print(all(not str(f.__module__).startswith('__editable__') for f in sys.meta_path))"
    )
    where = run(python, "-c", probe, HAZARDLENS_CONFIG_DIR=str(override)).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where[:2]), where
    assert where[2:] == [str(override / "taxonomy.yaml"), "True"]

    assert "production model=" in run(*cli, "init").stderr  # the CLI talks on stderr, prints results on stdout
    key = run(*cli, "keys", "create", "--org", "420000", "--role", "service").stdout.split()[-1]
    run(*cli, "import", "coco", "--help")  # every command registers (imports) from the installed copy

    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [*cli, "serve", "--port", str(port)],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**env, "HAZARDLENS_CONFIG_DIR": str(override)},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(1)
        image = Image.new("RGB", (640, 480), (120, 130, 140))
        ImageDraw.Draw(image).rectangle((200, 150, 420, 400), fill=(230, 200, 30))
        buf = io.BytesIO()
        image.save(buf, format="JPEG")
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=300) as http:
            detected = http.post("/v1/detect", files={"file": ("photo.jpg", buf.getvalue(), "image/jpeg")})
            assert detected.status_code == 200, detected.text
            assert isinstance(detected.json()["detections"], list)
            assert http.get("/v1/taxonomy").json()["release"] == "override-test"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
