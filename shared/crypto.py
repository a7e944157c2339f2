"""AES-GCM encryption of integration credentials with a key from the environment.

The ciphertext is ``nonce (12 bytes) || ciphertext+tag`` and is bound to the
integration id (associated data), so a row's credentials cannot be swapped onto
another row. Plaintext never leaves this module except as the decrypted mapping.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import ConfigurationError, SwitchboardError

_NONCE = 12


class CredentialsUnreadable(SwitchboardError):
    """Stored credentials could not be decrypted (wrong key or tampered row)."""


def parse_key(encoded: str) -> bytes:
    """A 32-byte key from its base64 form; fails naming the variable, never echoing it."""
    try:
        key = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError("SWITCHBOARD_SECRET_KEY is not valid base64") from None
    if len(key) != 32:
        raise ConfigurationError("SWITCHBOARD_SECRET_KEY must decode to 32 bytes (AES-256)")
    return key


def new_key() -> str:
    """A fresh random key, base64-encoded."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def ensure_key_file(path: Path) -> str:
    """Read the key kept in ``path``, creating it with mode 0600 if absent."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = new_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


class CredentialCipher:
    """Encrypts and decrypts credential mappings for one key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).hexdigest()[:12]

    def __repr__(self) -> str:  # never show key material
        return f"CredentialCipher(key_id={self.key_id!r})"

    def encrypt(self, credentials: dict[str, str], *, bound_to: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        plaintext = orjson.dumps(credentials, option=orjson.OPT_SORT_KEYS)
        return nonce + self._aead.encrypt(nonce, plaintext, bound_to.encode())

    def decrypt(self, blob: bytes, *, bound_to: str) -> dict[str, str]:
        try:
            plaintext = self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], bound_to.encode())
        except (InvalidTag, ValueError):
            raise CredentialsUnreadable(
                f"credentials of {bound_to} cannot be decrypted with key {self.key_id}"
            ) from None
        value = orjson.loads(plaintext)
        return {str(k): str(v) for k, v in value.items()}
