"""Post-training INT8 quantisation of a registered model, and the variants the registry keeps.

An INT8 variant is derived from the version's FP32 ONNX export (the same file the ``onnx`` engine
serves) with NNCF: activation ranges are calibrated on real photos (approved library samples, or a
dataset version's train images), weights are quantised per channel, and the detection head's own
arithmetic (box decoding, DFL, the class sigmoid) stays in floating point as Ultralytics does for its
OpenVINO INT8 export, because boxes and scores lose most there. Two runtimes:

* ``openvino-int8``: an OpenVINO IR (``.xml``/``.bin``) with FakeQuantize nodes, run by
  :class:`~hazardlens.models.engines.OpenVinoEngine` with VNNI kernels;
* ``onnx-int8``: a QDQ ONNX for ONNX Runtime (:class:`~hazardlens.models.engines.OnnxEngine`).

A variant is only served once it has been evaluated against the FP32 model on a dataset version and
lost at most the allowed mAP50 (``HAZARDLENS_QUANTIZE_MAX_LOSS``, default 0.01). The evaluation
itself belongs to the training part; the CLI (``hazardlens models quantize``) runs it between
:func:`quantize_onnx` and :func:`record_variant`. The card of the model version records every
variant, accepted or refused, with both figures; the files live in the object store beside the
weights, so every serving worker fetches the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from hazardlens.audit import record
from hazardlens.auth import Principal, require_system
from hazardlens.context import Context
from hazardlens.errors import HazardError, Invalid, NotFound
from hazardlens.models.engines import INT8_KINDS, model_metadata, sha256_file
from hazardlens.models.preprocess import decode_image, letterbox
from hazardlens.orm import ModelVersion, Sample
from hazardlens.store.base import blob_key

log = logging.getLogger(__name__)

#: Calibration photos used at most; NNCF's own default subset is 300.
MAX_CALIBRATION = 300
#: Fewer than this and the activation ranges are guesswork: refused.
MIN_CALIBRATION = 8
#: The OpenVINO IR's file name: Ultralytics recognises an OpenVINO model by "_openvino_model" in it,
#: which lets the training part's evaluation read the variant as it reads any export.
OV_XML = "hazardlens_openvino_model.xml"


class QuantizationRejected(HazardError):
    status, code = 422, "quantization_rejected"


def variant_prefix(name: str, version: str, kind: str) -> str:
    return f"models/{name}/{version}/variants/{kind}/"


def check_kind(kind: str) -> str:
    kind = (kind or "").strip().lower()
    if kind not in INT8_KINDS:
        raise Invalid(f"unknown INT8 variant {kind!r}; use {' or '.join(INT8_KINDS)}", code="unknown_engine")
    return kind


# ---- calibration data ---------------------------------------------------------------------------


def approved_sample_bytes(ctx: Context, limit: int = MAX_CALIBRATION) -> list[bytes]:
    """Original bytes of up to ``limit`` library samples with an approved annotation, spread evenly over
    the library (the newest and oldest alike). Calibration only measures activation ranges inside this
    process; no image or label leaves it, so the registry's quantisation may read every organisation's
    approved samples as training of the registry's model does."""
    with ctx.db.session() as s:
        rows = list(
            s.execute(
                select(Sample.id, Sample.sha256)
                .where(Sample.approved_revision_id.is_not(None), Sample.deleted_at.is_(None))
                .order_by(Sample.id)
            ).tuples()
        )
    if len(rows) > limit:
        step = len(rows) / limit
        rows = [rows[int(i * step)] for i in range(limit)]
    out = []
    for _, sha in rows:
        with contextlib.suppress(Exception):  # a missing blob is one fewer calibration photo
            out.append(ctx.store.get(blob_key(sha)))
    return out


def calibration_tensors(images: Sequence[bytes | Path], imgsz: int) -> list[np.ndarray]:
    """Decoded, letterboxed (square ``imgsz``, as the evaluation sees them) float32 NCHW tensors of one
    image each; undecodable files are skipped."""
    tensors = []
    for item in images:
        try:
            data = item.read_bytes() if isinstance(item, Path) else item
            image, _ = decode_image(data, imgsz)
        except (HazardError, OSError):
            continue
        padded, _, _ = letterbox(image, imgsz)
        tensors.append(np.ascontiguousarray(padded[..., ::-1].transpose(2, 0, 1))[None].astype(np.float32) / 255.0)
    return tensors


def check_calibration(calibration: Sequence[object]) -> None:
    if len(calibration) < MIN_CALIBRATION:
        raise Invalid(
            f"{len(calibration)} calibration image(s); quantisation needs at least {MIN_CALIBRATION}",
            code="too_few_calibration_images",
        )


# ---- quantisation -------------------------------------------------------------------------------


def _head_prefix(names: Sequence[str], sigmoid_names: Sequence[str]) -> str:
    """The detection head's name scope in an Ultralytics ONNX graph (``/model.23/``): where the last
    Sigmoid (the class scores) lives."""
    if not sigmoid_names:
        raise Invalid("the model has no Sigmoid: not an Ultralytics YOLO detection export", code="invalid_model")
    last = sigmoid_names[-1]
    parts = last.strip("/").split("/")
    return "/" + parts[0] + "/" if len(parts) > 1 else ""


def _ignored(nodes: Sequence[tuple[str, str]]) -> list[str]:
    """Head nodes that stay in floating point: everything of the head's own arithmetic (box decode,
    DFL, concat, sigmoid) but its convolutions, whose weights and inputs quantise well."""
    head = _head_prefix([n for n, _ in nodes], [n for n, t in nodes if t == "Sigmoid"])
    keep_conv = {"Conv", "Convolution"}
    return [
        name
        for name, op in nodes
        if (head and name.startswith(head) and (op not in keep_conv or "/dfl/" in name)) or op == "Sigmoid"
    ]


def quantize_onnx(
    onnx_path: Path, kind: str, calibration: Sequence[np.ndarray], out_dir: Path
) -> tuple[Path, list[Path]]:
    """INT8 ``kind`` variant of ``onnx_path`` calibrated on ``calibration`` tensors, written to
    ``out_dir``; returns the file engines load and every file of the variant."""
    import nncf
    import onnx

    kind = check_kind(kind)
    check_calibration(calibration)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = nncf.Dataset(list(calibration))
    options: dict[str, Any] = {
        "preset": nncf.QuantizationPreset.MIXED,
        "subset_size": len(calibration),
    }
    if kind == "onnx-int8":
        model = onnx.load(str(onnx_path))
        input_name = model.graph.input[0].name
        nodes = [(n.name, n.op_type) for n in model.graph.node]
        quantized = nncf.quantize(
            model,
            nncf.Dataset(list(calibration), lambda x: {input_name: x}),
            ignored_scope=nncf.IgnoredScope(names=_ignored(nodes), validate=False),
            **options,
        )
        target = out_dir / "model-int8.onnx"
        onnx.save(quantized, str(target))  # nncf keeps the metadata_props (names, stride, ...)
        return target, [target]
    import openvino as ov
    import yaml

    ov_model = ov.Core().read_model(str(onnx_path))
    nodes = [(op.get_friendly_name(), op.get_type_name()) for op in ov_model.get_ordered_ops()]
    quantized = nncf.quantize(
        ov_model, dataset, ignored_scope=nncf.IgnoredScope(names=_ignored(nodes), validate=False), **options
    )
    target = out_dir / OV_XML
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    meta = out_dir / "metadata.yaml"  # what Ultralytics' OpenVINO loader and our engine read
    meta.write_text(yaml.safe_dump(model_metadata(onnx_path), allow_unicode=True), encoding="utf-8")
    return target, [target, target.with_suffix(".bin"), meta]


# ---- the registry's record ----------------------------------------------------------------------


def judge(fp32_map50: float, int8_map50: float, allowed_loss: float) -> tuple[float, bool]:
    """mAP50 lost by the variant and whether that is within ``allowed_loss`` (a negative allowance
    refuses every variant: a way to force FP32)."""
    loss = round(float(fp32_map50) - float(int8_map50), 5)
    return loss, loss <= allowed_loss


def record_variant(
    ctx: Context,
    principal: Principal,
    name: str,
    version: str,
    kind: str,
    files: Sequence[Path],
    evaluation: dict[str, Any],
    accepted: bool,
) -> dict[str, Any]:
    """Store the variant's files beside the weights and record it in the version's card (accepted or
    refused, with the figures it was judged by); audited as ``model.variant``. Only the system
    organisation changes the registry."""
    from hazardlens.models.registry import get_model

    require_system(principal, "adding a quantised variant to a model")
    kind = check_kind(kind)
    prefix = variant_prefix(name, version, kind)
    stored = {}
    if accepted:  # a refused variant keeps its figures in the card, not its bytes in the store
        for f in files:
            with open(f, "rb") as fh:
                ctx.store.put_stream(prefix + f.name, fh, f.stat().st_size, "application/octet-stream")
            stored[f.name] = sha256_file(f)
    entry = {
        "kind": kind,
        "accepted": accepted,
        "files": stored,
        "main": files[0].name if files else None,
        "created_at": datetime.now(UTC).isoformat(),
        **evaluation,
    }
    with ctx.db.session() as s:
        mv = get_model(s, name, version)
        before = {"variants": (mv.card or {}).get("variants", {})}
        card = dict(mv.card or {})
        card["variants"] = {**card.get("variants", {}), kind: entry}
        mv.card = card  # a new dict: the JSON column notices the change
        record(s, principal, "model.variant", "model", mv.id, before=before, after={"variants": card["variants"]})
    return entry


def accepted_variants(mv: ModelVersion) -> list[str]:
    """INT8 kinds of this version that passed their accuracy check."""
    variants = (mv.card or {}).get("variants") or {}
    return [k for k, v in variants.items() if k in INT8_KINDS and isinstance(v, dict) and v.get("accepted")]


def variant_path(ctx: Context, mv: ModelVersion, kind: str) -> Path:
    """The accepted ``kind`` variant of ``mv`` as local files (fetched from the store once, checked by
    hash); returns the file its engine loads. NotFound (``variant_not_found``) when there is none or it
    was refused."""
    kind = check_kind(kind)
    entry = ((mv.card or {}).get("variants") or {}).get(kind)
    if not isinstance(entry, dict) or not entry.get("accepted") or not entry.get("files"):
        state = "was refused by its accuracy check" if isinstance(entry, dict) else "does not exist"
        raise NotFound(
            f"the {kind} variant of {mv.name} {mv.version} {state}; run hazardlens models quantize "
            f"{mv.name} {mv.version} --engine {kind}",
            code="variant_not_found",
        )
    files: dict[str, str] = entry["files"]
    digest = hashlib.sha256("".join(sorted(files.values())).encode()).hexdigest()[:16]
    folder = ctx.settings.cache_dir / "variants" / f"{mv.weights_sha256[:16]}-{kind}-{digest}"
    if not all((folder / f).is_file() for f in files):
        work = Path(tempfile.mkdtemp(prefix=".variant-", dir=_mkdir(folder.parent)))
        try:
            for fname, sha in files.items():
                ctx.store.download_to(variant_prefix(mv.name, mv.version, kind) + fname, str(work / fname))
                if sha256_file(work / fname) != sha:
                    raise HazardError(
                        f"variant file {fname} of {mv.name} {mv.version} does not match its recorded hash",
                        code="variant_corrupt",
                        status=500,
                    )
            with contextlib.suppress(OSError):
                work.rename(folder)  # another worker may have won the race: its copy is as good
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return folder / str(entry["main"])


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def scratch(ctx: Context) -> Iterator[Path]:
    """A private work folder under the cache (quantisation writes a few files, then uploads them)."""
    folder = Path(tempfile.mkdtemp(prefix="quantize-", dir=_mkdir(ctx.settings.cache_dir)))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
