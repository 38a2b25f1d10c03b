"""Make Ultralytics safe to use on an air-gapped inspection network.

Left alone, Ultralytics writes its settings to ``~/.config``, pings DNS to decide whether it is
online, downloads ``Arial.ttf`` / ``Arial.Unicode.ttf`` the first time it draws a label, and
pip-installs missing export requirements. None of that may happen here: the hosts have no internet,
``~`` is often read-only in containers, and a surprise ``pip install`` would change a validated
environment. :func:`prepare_ultralytics` must therefore run before the first ``import ultralytics``
(most of these switches are read once, at import time); it is cheap and idempotent, so every code path
that is about to touch Ultralytics simply calls it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

#: Characters a font must cover to label Chinese hazard classes (隐患 = hazard, 灭火器 = extinguisher).
_CJK_PROBE = "隐患灭火器安全"

#: Fonts that ship inside PyPI packages, best first: (import name, path inside the package).
#: ``paperang-p2-fonts-cjk`` (WenQuanYi Micro Hei, ~5 MB) is the one hazardlens depends on; the others
#: are accepted when an operator happens to have them installed.
_PACKAGED_CJK_FONTS: tuple[tuple[str, str], ...] = (
    ("paperang_p2_fonts_cjk", "fonts/wqy-microhei.ttc"),
    ("pylopdf_fonts_zh_cn", "NotoSansSC-Regular.otf"),
    ("manimgx_fonts_cjk", "NotoSansCJK-VF.otf.ttc"),
)

#: Debian/RedHat font package locations, used only when no Python package provides one.
_SYSTEM_CJK_FONTS: tuple[str, ...] = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)

#: Ultralytics settings that would phone home or start third-party loggers.
_OFFLINE_SETTINGS: dict[str, bool] = {
    "sync": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,
    "vscode_msg": False,
    "openvino_msg": False,
}

_lock = threading.Lock()
_config_dir: Path | None = None


def _default_root(home: Path | None) -> Path:
    if home is None:
        try:
            from hazardlens.settings import get_settings

            return (get_settings().cache_dir / "ultralytics").resolve()
        except Exception:  # settings unusable (e.g. bad env): still never fall back to ~
            return Path(tempfile.gettempdir()) / f"hazardlens-ultralytics-{os.getuid()}"
    return (Path(home) / "cache" / "ultralytics").resolve()


def _has_glyphs(path: Path, text: str = _CJK_PROBE) -> bool:
    """A font file name says nothing reliable about coverage, so look at its character map."""
    try:
        from fontTools.ttLib import TTFont

        font = TTFont(str(path), fontNumber=0, lazy=True)
        try:
            cmap = font.getBestCmap() or {}
        finally:
            font.close()
        return all(ord(ch) in cmap for ch in text)
    except Exception:
        return False


def _cjk_candidates() -> list[Path]:
    found: list[Path] = []
    explicit = os.environ.get("HAZARDLENS_CJK_FONT")
    if explicit:
        found.append(Path(explicit))
    bundled = Path(__file__).resolve().parent.parent / "core" / "fonts"  # hazardlens/fonts when installed
    spec = importlib.util.find_spec("hazardlens")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "fonts"
    if bundled.is_dir():
        found.extend(sorted(p for p in bundled.iterdir() if p.suffix.lower() in {".ttf", ".ttc", ".otf"}))
    for module, relative in _PACKAGED_CJK_FONTS:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                found.append(Path(location) / relative)
    found.extend(Path(p) for p in _SYSTEM_CJK_FONTS)
    return found


@lru_cache(maxsize=1)
def cjk_font_path() -> Path:
    """The font to draw Chinese class names with (annotated images, plots).

    Order: ``HAZARDLENS_CJK_FONT``, fonts bundled in ``hazardlens/fonts``, font packages from PyPI,
    then system fonts. Every candidate is checked for real Chinese glyphs so that a misnamed file never
    produces boxes labelled with tofu.
    """
    for candidate in _cjk_candidates():
        if candidate.is_file() and _has_glyphs(candidate):
            return candidate
    raise FileNotFoundError(
        "no font with Chinese glyphs found; install the 'paperang-p2-fonts-cjk' package "
        "or point HAZARDLENS_CJK_FONT at a .ttf/.ttc/.otf file"
    )


def latin_font_path() -> Path:
    """matplotlib (an Ultralytics dependency) always ships DejaVu Sans, a fine stand-in for Arial."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def _install_font(source: Path, target: Path) -> None:
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)  # atomic: a concurrent reader never sees half a font
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _install_fonts(config_dir: Path) -> None:
    _install_font(latin_font_path(), config_dir / "Arial.ttf")
    try:
        unicode_font = cjk_font_path()
    except FileNotFoundError as exc:
        # Drawing Chinese labels as tofu beats Ultralytics trying (and hanging on) a download.
        log.warning("%s; Chinese labels will not render", exc)
        unicode_font = latin_font_path()
    _install_font(unicode_font, config_dir / "Arial.Unicode.ttf")


def _switch_off_network(config_dir: Path) -> None:
    """Patch the values Ultralytics already read at import time, in case it was imported first."""
    import ultralytics.utils as uutils
    import ultralytics.utils.checks as uchecks

    for module in (uutils, uchecks):
        setattr(module, "ONLINE", False)  # noqa: B010  (checks imports the names: set them on both)
        setattr(module, "AUTOINSTALL", False)  # noqa: B010
    try:
        from ultralytics.utils import events as uevents

        uevents.events.enabled = False
    except (ImportError, AttributeError):
        pass

    settings = uutils.SETTINGS
    wanted: dict[str, object] = {k: v for k, v in _OFFLINE_SETTINGS.items() if k in settings.defaults}
    if "runs_dir" in settings.defaults:  # the default is the git root/cwd, i.e. the source tree
        wanted["runs_dir"] = str(config_dir / "runs")
    if "weights_dir" in settings.defaults:
        wanted["weights_dir"] = str(config_dir / "weights")
    changed = {k: v for k, v in wanted.items() if settings.get(k) != v}
    if changed:
        settings.update(changed)


def ultralytics_config_dir() -> Path:
    """The folder Ultralytics reads settings and fonts from in this process (prepares it if needed)."""
    prepare_ultralytics()
    assert _config_dir is not None
    return _config_dir


def prepare_ultralytics(home: Path | None = None) -> None:
    """Configure Ultralytics for offline use under ``home`` (the hazardlens home); safe to call often.

    The folder is ``<home>/cache/ultralytics`` unless ``YOLO_CONFIG_DIR`` is already set. Only the
    first call in a process decides it: Ultralytics fixes its config dir when first imported, so later
    calls with another ``home`` keep the first folder. If something imported Ultralytics before this
    ran, its folder is kept too and only fonts and settings are fixed up.
    """
    global _config_dir
    if _config_dir is not None:
        return
    with _lock:
        if _config_dir is not None:
            return
        root = _default_root(home)
        os.environ["YOLO_OFFLINE"] = "1"
        os.environ["YOLO_AUTOINSTALL"] = "False"
        if "ultralytics" not in sys.modules:
            os.environ.setdefault("YOLO_CONFIG_DIR", str(root))  # an operator's explicit choice wins
            os.environ.setdefault("MPLCONFIGDIR", str(Path(os.environ["YOLO_CONFIG_DIR"]) / "matplotlib"))
        else:
            log.warning("ultralytics was imported before prepare_ultralytics(); its config dir stays")

        import ultralytics.utils as uutils

        config_dir = Path(uutils.USER_CONFIG_DIR)
        config_dir.mkdir(parents=True, exist_ok=True)
        _install_fonts(config_dir)
        _switch_off_network(config_dir)
        _keep_pil_open_plain()
        _config_dir = config_dir


def _keep_pil_open_plain() -> None:
    """Ultralytics patches ``PIL.Image.open`` process-wide so that an unidentified file makes it look
    for (and try to install) ``pi-heif``: a non-image upload would then fail with ModuleNotFoundError
    instead of PIL's UnidentifiedImageError. HEIF is registered through pillow-heif instead, and the
    patch is told the plugin is already there, so it passes every call straight to PIL."""
    from ultralytics.utils import patches

    from hazardlens.imagefiles import register_heif

    register_heif()
    patches._pil_plugins_registered = True
