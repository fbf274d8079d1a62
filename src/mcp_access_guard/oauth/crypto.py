"""Encryption at rest for stored values that hold secrets (upstream refresh tokens, client secrets).

AES-256-GCM under a key derived with HKDF-SHA256 from the operator's `secret_key` (COOKIE_ENCRYPTION_KEY), one key
per purpose. Each value gets a random 96-bit nonce, and the associated data binds it to where it is kept (its store
key), so a value copied under another key, or read for another purpose, does not decrypt.

Sealed format: a version byte (1), the 12-byte nonce, then the ciphertext with its 16-byte tag.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16
_INFO_PREFIX = b"mcp-access-guard/v1/at-rest/"


class DecryptionError(Exception):
    """A sealed value that does not open: tampered with, truncated, sealed under another secret key or purpose, or
    moved from the key it was stored under. Treat the value as absent."""


class ValueCipher:
    """Seals and opens values for one `purpose` (e.g. "upstream-refresh-token"); a different purpose derives a
    different key. The same `secret_key` on every replica opens what any of them sealed."""

    def __init__(self, secret_key: str | bytes, purpose: str) -> None:
        material = secret_key.encode() if isinstance(secret_key, str) else secret_key
        if not material:
            raise ValueError("secret_key is empty")
        if not purpose:
            raise ValueError("purpose is empty")
        self.purpose = purpose
        derived = HKDF(algorithm=SHA256(), length=32, salt=None, info=_INFO_PREFIX + purpose.encode())
        self._aead = AESGCM(derived.derive(material))

    def __repr__(self) -> str:
        return f"ValueCipher(purpose={self.purpose!r})"

    def encrypt(self, plaintext: bytes, *, bound_to: str) -> bytes:
        """`plaintext` sealed for storage under `bound_to` (its store key, or a cookie's name)."""
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, bound_to.encode())

    def decrypt(self, sealed: bytes, *, bound_to: str) -> bytes:
        """The plaintext of a value sealed by `encrypt` with the same secret key, purpose and `bound_to`;
        DecryptionError otherwise, whatever the input."""
        if len(sealed) < 1 + _NONCE_BYTES + _TAG_BYTES or sealed[:1] != _VERSION:
            raise DecryptionError("not a sealed value of a known version")
        nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, bound_to.encode())
        except InvalidTag:
            raise DecryptionError(f"the sealed value does not open for {self.purpose!r} here") from None
