"""Process-wide settings, read once from ``HAZARDLENS_*`` environment variables.

Everything the embedded default keeps lives under ``HAZARDLENS_HOME`` (default ``./var``) so that an
administrator can back up or move one folder.
"""

from __future__ import annotations

import atexit
import os
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath

#: Environment variable naming a deployment's configs folder; its files win over the shipped ones.
CONFIG_DIR_ENV = "HAZARDLENS_CONFIG_DIR"

_extracted = ExitStack()  # shipped configs extracted from a zip import live until the process exits
atexit.register(_extracted.close)


@lru_cache(maxsize=1)
def shipped_configs() -> Path:
    """The configs shipped with the code (package ``hazardlens.configs``, folder ``configs/`` of the
    repository) as a real folder. Read them through :func:`config_path` so an override applies."""
    root = resources.files("hazardlens.configs")
    if isinstance(root, Path):  # installed (wheel or editable): the package folder itself
        return root
    return _extracted.enter_context(resources.as_file(root))  # zip import: extracted once


def config_override_dir() -> Path | None:
    """``HAZARDLENS_CONFIG_DIR``: a folder laid out like ``configs/`` whose files win over the shipped ones."""
    value = os.environ.get(CONFIG_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _relative(relative: str | Path) -> PurePosixPath:
    rel = PurePosixPath(Path(relative).as_posix())
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"config path {str(relative)!r} must be relative to the configs folder")
    return rel


def config_dirs(folder: str | Path = "") -> list[Path]:
    """The folders a config is looked up in, first wins: the override (if set) then the shipped configs."""
    rel = _relative(folder)
    override = config_override_dir()
    bases = [override, shipped_configs()] if override is not None else [shipped_configs()]
    return [base / rel for base in bases]


def config_path(relative: str | Path) -> Path:
    """A config file (``taxonomy.yaml``, ``class_maps/sfchd.yaml``, ...) as a real path: the override
    folder's copy when it has one, else the shipped one (which may not exist: callers report that)."""
    rel = _relative(relative)
    for base in config_dirs():
        if (base / rel).is_file():
            return base / rel
    return shipped_configs() / rel


def config_files(folder: str | Path, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> dict[str, Path]:
    """Config files of one folder (``class_maps``, ``train``, ...) by stem; the override's win."""
    found: dict[str, Path] = {}
    for base in reversed(config_dirs(folder)):
        if base.is_dir():
            found.update({p.stem: p for p in sorted(base.iterdir()) if p.suffix in suffixes and p.is_file()})
    return dict(sorted(found.items()))


def find_config_file(value: str | Path, *bases: Path) -> Path | None:
    """A file named on the command line or inside a config: the path as given (absolute, or relative to
    the working folder or one of ``bases``), else the same path inside the configs (override, then
    shipped), written either from the repository root (``configs/augment/x.yaml``) or from the configs
    folder (``augment/x.yaml``). So repository-relative names work from anywhere once installed."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    for base in (Path.cwd(), *bases):
        if (base / path).is_file():
            return (base / path).resolve()
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    if not parts or ".." in parts:
        return None
    candidate = config_path(Path(*parts))
    return candidate if candidate.is_file() else None


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(f"HAZARDLENS_{name}")
    return value if value not in (None, "") else default


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    home: Path = Path("var")
    database_url: str = ""
    store: str = "filesystem"  # filesystem | minio
    minio_endpoint: str = "127.0.0.1:9000"
    minio_access_key: str = ""
    minio_secret_key: str = ""
    minio_bucket: str = "hazardlens"
    minio_secure: bool = False
    minio_region: str | None = None
    max_upload_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 100_000_000  # 100 MP: larger is treated as a decompression bomb
    near_duplicate_distance: int = 6
    thumbnail_size: int = 320
    taxonomy_path: Path = field(default_factory=lambda: config_path("taxonomy.yaml"))
    engine: str = "onnx"  # onnx | openvino | onnx-int8 | openvino-int8 | ultralytics | auto
    device: str = "auto"  # auto | cpu | cuda
    # Parallel inference streams per loaded model and intra-op threads per stream; 0 = sized to the
    # cores (hazardlens.models.engines.plan_streams).
    infer_streams: int = 0
    infer_threads: int = 0
    # Images waiting for or in inference per model before a request is answered 503 + Retry-After.
    max_queue: int = 64
    # mAP50 an INT8 variant may lose against FP32 before `models quantize` refuses it.
    quantize_max_loss: float = 0.01
    request_timeout_s: float = 60.0
    model_poll_s: float = 2.0
    # Sliced inference (?tiles=true): original pixels per window, about the frame size the model was
    # trained on (the baseline: 1280 px CCTV frames), and the windows' overlap.
    tile_window: int = 1280
    tile_overlap: float = 0.25
    # The organisation whose administrators run the one model registry every organisation's
    # detection uses (promote, roll back, archive, import); see hazardlens.auth.require_system.
    system_org: str = "000000"
    # /readyz reports not ready when the home's disk has less free space than this (0: no check):
    # a full disk fails every upload and every catalogue write (issue 13, item 8).
    min_free_bytes: int = 256 * 1024 * 1024
    # The Label Studio the ML backend fetches task images from when they live there (uploads,
    # local-files storage): its address and an API token (legacy or personal access token). Unset:
    # such tasks are answered 422 unresolvable_image (hazardlens.labeling.ls_images).
    labelstudio_url: str = ""
    labelstudio_token: str = ""
    # Background jobs (issue 16): empty = the embedded runner (a thread of the server, no broker);
    # a Celery broker URL (redis://..., amqp://...) = jobs run on `hazardlens worker` processes.
    broker_url: str = ""
    # A message a worker took but never acknowledged (it died) goes back to the queue after this long
    # (Redis; RabbitMQ redelivers as soon as the worker's connection drops).
    broker_visibility_s: float = 3600.0
    # A running job or shard whose runner has not written a heartbeat for this long is taken over.
    job_lease_s: float = 60.0
    # Training (and other GPU kinds) go to the `gpu` queue (workers started with --queues gpu).
    gpu_queue: bool = False
    # Library-wide batch jobs (pre-labelling, ...): samples per shard.
    shard_size: int = 200

    @property
    def database(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'catalogue.sqlite3').resolve()}"

    @property
    def store_root(self) -> Path:
        return self.home / "store"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def load_settings() -> Settings:
    """Build settings from the environment; unknown store names fail early with a clear message."""
    store = (_env("STORE", "filesystem") or "filesystem").lower()
    if store not in {"filesystem", "minio"}:
        raise ValueError(f"HAZARDLENS_STORE must be 'filesystem' or 'minio', not {store!r}")
    defaults = Settings()
    taxonomy = _env("TAXONOMY")
    tile_window = int(_env("TILE_WINDOW", str(defaults.tile_window)) or defaults.tile_window)
    tile_overlap = float(_env("TILE_OVERLAP", str(defaults.tile_overlap)) or defaults.tile_overlap)
    if tile_window < 64 or not 0.0 <= tile_overlap < 0.9:
        raise ValueError(
            f"HAZARDLENS_TILE_WINDOW must be >= 64 and HAZARDLENS_TILE_OVERLAP in [0, 0.9), "
            f"not {tile_window} and {tile_overlap}"
        )
    return Settings(
        home=Path(_env("HOME", "var") or "var"),
        database_url=_env("DATABASE_URL", "") or "",
        store=store,
        minio_endpoint=_env("MINIO_ENDPOINT", defaults.minio_endpoint) or defaults.minio_endpoint,
        minio_access_key=_env("MINIO_ACCESS_KEY", "") or "",
        minio_secret_key=_env("MINIO_SECRET_KEY", "") or "",
        minio_bucket=_env("MINIO_BUCKET", defaults.minio_bucket) or defaults.minio_bucket,
        minio_secure=_bool(_env("MINIO_SECURE"), False),
        minio_region=_env("MINIO_REGION"),
        max_upload_bytes=int(_env("MAX_UPLOAD_BYTES", str(defaults.max_upload_bytes)) or 0),
        max_pixels=int(_env("MAX_PIXELS", str(defaults.max_pixels)) or 0),
        taxonomy_path=Path(taxonomy) if taxonomy else defaults.taxonomy_path,
        engine=(_env("ENGINE", "onnx") or "onnx").lower(),
        device=(_env("DEVICE", "auto") or "auto").lower(),
        infer_streams=max(0, int(_env("INFER_STREAMS", "0") or 0)),
        infer_threads=max(0, int(_env("INFER_THREADS", "0") or 0)),
        max_queue=max(1, int(_env("MAX_QUEUE", str(defaults.max_queue)) or defaults.max_queue)),
        quantize_max_loss=float(_env("QUANTIZE_MAX_LOSS", str(defaults.quantize_max_loss)) or 0.01),
        request_timeout_s=float(_env("REQUEST_TIMEOUT_S", "60") or 60),
        model_poll_s=float(_env("MODEL_POLL_S", "2") or 2),
        tile_window=tile_window,
        tile_overlap=tile_overlap,
        system_org=(_env("SYSTEM_ORG", defaults.system_org) or defaults.system_org).strip(),
        min_free_bytes=max(0, int(float(_env("MIN_FREE_MB", "256") or 0) * 1024 * 1024)),
        labelstudio_url=(_env("LABEL_STUDIO_URL", "") or "").strip(),
        labelstudio_token=(_env("LABEL_STUDIO_TOKEN", "") or "").strip(),
        broker_url=(_env("BROKER_URL", "") or "").strip(),
        broker_visibility_s=float(_env("BROKER_VISIBILITY_S", str(defaults.broker_visibility_s)) or 3600),
        job_lease_s=max(2.0, float(_env("JOB_LEASE_S", str(defaults.job_lease_s)) or 60)),
        gpu_queue=_bool(_env("GPU_QUEUE"), False),
        shard_size=max(1, min(5000, int(_env("SHARD_SIZE", str(defaults.shard_size)) or 200))),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
