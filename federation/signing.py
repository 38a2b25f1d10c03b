"""This instance's Ed25519 key pair and the signatures on every federation request and answer.

The key pair is made at ``hazardlens init`` under ``<home>/federation/``: the private key (PKCS#8
PEM, mode 0600) never leaves the home; the public key is what ``hazardlens peers key`` prints and
the other instance registers with ``hazardlens peers add``.

A request is signed over (method, path with query, time, SHA-256 of the body); an answer over
(status, the request's signature, time, SHA-256 of the body), so an answer cannot be replayed for
another request nor its body altered. Both carry the signer's key id (first 16 hex of the SHA-256 of
the raw public key), by which the receiver finds the peer and its registered public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hazardlens.errors import HazardError, Invalid, Unauthorized
from hazardlens.settings import Settings

KEY_HEADER = "X-Hazardlens-Key"
TIME_HEADER = "X-Hazardlens-Time"
SIG_HEADER = "X-Hazardlens-Signature"
#: How far a request's time may be from ours (clocks of two intranets differ a little).
MAX_SKEW_S = 300
_DOMAIN = b"hazardlens-federation-v1"


class PeerAnswerInvalid(HazardError):
    """A peer's answer failed its signature check: nothing of it is used."""

    status, code = 502, "peer_bad_signature"


def key_dir(settings: Settings) -> Path:
    return settings.home / "federation"


def _private_path(settings: Settings) -> Path:
    return key_dir(settings) / "instance_ed25519.pem"


def public_path(settings: Settings) -> Path:
    return key_dir(settings) / "instance_ed25519.pub"


def ensure_keypair(settings: Settings) -> str:
    """Create the instance key pair once (safe to call again); returns the public key (base64)."""
    folder = key_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    private = _private_path(settings)
    if not private.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # created 0600 from the start: no moment in which another user of the machine could read it
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
    os.chmod(private, 0o600)
    public = encode_public(load_private(settings).public_key())
    public_path(settings).write_text(public + "\n", encoding="ascii")
    return public


def load_private(settings: Settings) -> Ed25519PrivateKey:
    path = _private_path(settings)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise Invalid(
            f"this instance has no federation key yet ({path}); run 'hazardlens init'", code="no_instance_key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise Invalid(f"{path} is not an Ed25519 private key", code="no_instance_key")
    return key


def encode_public(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def parse_public(text: str) -> str:
    """A public key as ``peers key`` prints it (base64 of the 32 raw bytes) or as a PEM file; returns
    the base64 form. Invalid (``invalid_public_key``) otherwise."""
    text = text.strip()
    if len(text) > 2000:
        raise Invalid("a public key is a short text; this is not one", code="invalid_public_key")
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode("ascii"))
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not Ed25519")
            return encode_public(key)
        raw = base64.b64decode(text, validate=True)
        return encode_public(Ed25519PublicKey.from_public_bytes(raw))
    except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
        raise Invalid(f"not an Ed25519 public key: {exc}", code="invalid_public_key") from None


def key_id(public_b64: str) -> str:
    return hashlib.sha256(base64.b64decode(public_b64)).hexdigest()[:16]


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def request_message(method: str, path: str, timestamp: str, body: bytes) -> bytes:
    return b"\n".join(
        [_DOMAIN, b"request", method.upper().encode(), path.encode(), timestamp.encode(), body_hash(body).encode()]
    )


def answer_message(status: int, request_signature: str, timestamp: str, body: bytes) -> bytes:
    return b"\n".join(
        [
            _DOMAIN,
            b"answer",
            str(status).encode(),
            request_signature.encode(),
            timestamp.encode(),
            body_hash(body).encode(),
        ]
    )


@dataclass(frozen=True)
class Signer:
    """This instance signing: its private key and key id."""

    private: Ed25519PrivateKey
    key_id: str

    @classmethod
    def of(cls, settings: Settings) -> Signer:
        private = load_private(settings)
        return cls(private, key_id(encode_public(private.public_key())))

    def headers(self, message: bytes, timestamp: str) -> dict[str, str]:
        return {
            KEY_HEADER: self.key_id,
            TIME_HEADER: timestamp,
            SIG_HEADER: base64.b64encode(self.private.sign(message)).decode("ascii"),
        }

    def sign_request(self, method: str, path: str, body: bytes) -> dict[str, str]:
        ts = str(int(time.time()))
        return self.headers(request_message(method, path, ts, body), ts)

    def sign_answer(self, status: int, request_signature: str, body: bytes) -> dict[str, str]:
        ts = str(int(time.time()))
        return self.headers(answer_message(status, request_signature, ts, body), ts)


def verify(public_b64: str, signature_b64: str, message: bytes) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64))
        key.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def check_time(timestamp: str | None) -> None:
    """Unauthorized (``stale_signature``) for a missing, malformed or too old/new signing time."""
    try:
        ts = int(timestamp or "")
    except ValueError:
        raise Unauthorized("federation request without a valid signing time", code="stale_signature") from None
    if abs(time.time() - ts) > MAX_SKEW_S:
        raise Unauthorized(
            f"federation request signed {int(time.time()) - ts} s away from this instance's clock "
            f"(at most {MAX_SKEW_S} s allowed)",
            code="stale_signature",
        )
