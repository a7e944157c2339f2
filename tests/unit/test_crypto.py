"""Credential encryption: round trip, binding to the row, key handling."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest

from shared.crypto import (
    CredentialCipher,
    CredentialsUnreadable,
    ensure_key_file,
    new_key,
    parse_key,
)
from shared.errors import ConfigurationError


def test_round_trip_and_ciphertext_hides_the_values() -> None:
    cipher = CredentialCipher(parse_key(new_key()))
    creds = {"bot_token": "123:SECRET", "secret_token": "abc"}
    blob = cipher.encrypt(creds, bound_to="row-1")
    assert b"SECRET" not in blob
    assert cipher.decrypt(blob, bound_to="row-1") == creds
    assert cipher.encrypt(creds, bound_to="row-1") != blob  # fresh nonce each time


def test_ciphertext_is_bound_to_its_row_and_key() -> None:
    cipher = CredentialCipher(parse_key(new_key()))
    blob = cipher.encrypt({"k": "v"}, bound_to="row-1")
    with pytest.raises(CredentialsUnreadable):
        cipher.decrypt(blob, bound_to="row-2")
    with pytest.raises(CredentialsUnreadable):
        CredentialCipher(parse_key(new_key())).decrypt(blob, bound_to="row-1")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(CredentialsUnreadable):
        cipher.decrypt(tampered, bound_to="row-1")


def test_the_cipher_never_shows_its_key() -> None:
    key = new_key()
    cipher = CredentialCipher(parse_key(key))
    assert key not in repr(cipher) and key not in str(cipher.__dict__.get("key_id"))


@pytest.mark.parametrize("bad", ["not base64!!", base64.b64encode(b"short").decode()])
def test_bad_keys_fail_naming_the_variable_not_the_value(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="SWITCHBOARD_SECRET_KEY") as info:
        parse_key(bad)
    assert bad not in str(info.value)


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "data" / "secret.key"
    key = ensure_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_key_file(path) == key
    assert len(parse_key(key)) == 32
