"""Encryption at rest: a sealed value opens only with the same secret key, purpose and store key, and any change to
it is refused with DecryptionError."""

from __future__ import annotations

import pytest

from mcp_access_guard.oauth import DecryptionError, MemoryStore, ValueCipher, secret_key_id

pytestmark = pytest.mark.anyio

SECRET_KEY = "7f1c0e9a4b2d8e6f3a5c7b9d1e0f2a4c6b8d0e1f3a5c7e9b"
OTHER_SECRET_KEY = "0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c"
UPSTREAM_REFRESH_SECRET = "upstream-refresh-token-from-access-0123456789"
PURPOSE = "upstream-refresh-token"
STORE_KEY = secret_key_id("grant", "mag_rt_example")


def sealed_value() -> bytes:
    return ValueCipher(SECRET_KEY, PURPOSE).encrypt(UPSTREAM_REFRESH_SECRET.encode(), bound_to=STORE_KEY)


def test_roundtrip_on_another_replica() -> None:
    sealed = sealed_value()
    replica = ValueCipher(SECRET_KEY.encode(), PURPOSE)
    assert replica.decrypt(sealed, bound_to=STORE_KEY) == UPSTREAM_REFRESH_SECRET.encode()
    assert UPSTREAM_REFRESH_SECRET.encode() not in sealed


def test_empty_plaintext_roundtrips() -> None:
    cipher = ValueCipher(SECRET_KEY, PURPOSE)
    assert cipher.decrypt(cipher.encrypt(b"", bound_to=STORE_KEY), bound_to=STORE_KEY) == b""


def test_each_seal_has_a_fresh_nonce() -> None:
    first, second = sealed_value(), sealed_value()
    assert first != second
    assert first[1:13] != second[1:13]


@pytest.mark.parametrize(
    "offset",
    [0, 1, 12, 13, -17, -16, -1],
    ids=["version", "nonce", "nonce end", "ciphertext", "before tag", "tag", "tag end"],
)
def test_tampering_is_refused(offset: int) -> None:
    sealed = bytearray(sealed_value())
    sealed[offset] ^= 0x01
    with pytest.raises(DecryptionError):
        ValueCipher(SECRET_KEY, PURPOSE).decrypt(bytes(sealed), bound_to=STORE_KEY)


@pytest.mark.parametrize("cut", [0, 1, 13, 28, -1])
def test_truncated_or_empty_values_are_refused(cut: int) -> None:
    with pytest.raises(DecryptionError):
        ValueCipher(SECRET_KEY, PURPOSE).decrypt(sealed_value()[:cut], bound_to=STORE_KEY)


def test_appended_bytes_are_refused() -> None:
    with pytest.raises(DecryptionError):
        ValueCipher(SECRET_KEY, PURPOSE).decrypt(sealed_value() + b"\x00", bound_to=STORE_KEY)


def test_another_secret_key_cannot_open_it() -> None:
    with pytest.raises(DecryptionError):
        ValueCipher(OTHER_SECRET_KEY, PURPOSE).decrypt(sealed_value(), bound_to=STORE_KEY)


def test_another_purpose_cannot_open_it() -> None:
    with pytest.raises(DecryptionError, match="client-secret"):
        ValueCipher(SECRET_KEY, "client-secret").decrypt(sealed_value(), bound_to=STORE_KEY)


async def test_a_value_moved_to_another_store_key_does_not_open() -> None:
    store = MemoryStore()
    cipher = ValueCipher(SECRET_KEY, PURPOSE)
    victim, attacker = secret_key_id("grant", "mag_rt_victim"), secret_key_id("grant", "mag_rt_attacker")
    await store.put(victim, cipher.encrypt(UPSTREAM_REFRESH_SECRET.encode(), bound_to=victim), ttl=60)
    moved = await store.get(victim)
    assert moved is not None
    await store.put(attacker, moved, ttl=60)
    stolen = await store.get(attacker)
    assert stolen is not None
    with pytest.raises(DecryptionError):
        cipher.decrypt(stolen, bound_to=attacker)
    assert cipher.decrypt(moved, bound_to=victim) == UPSTREAM_REFRESH_SECRET.encode()


def test_the_error_and_the_repr_hold_no_secret() -> None:
    cipher = ValueCipher(SECRET_KEY, PURPOSE)
    assert SECRET_KEY not in repr(cipher)
    with pytest.raises(DecryptionError) as refused:
        ValueCipher(OTHER_SECRET_KEY, PURPOSE).decrypt(sealed_value(), bound_to=STORE_KEY)
    assert SECRET_KEY not in str(refused.value)
    assert OTHER_SECRET_KEY not in str(refused.value)
    assert STORE_KEY not in str(refused.value)


@pytest.mark.parametrize(("secret_key", "purpose"), [("", PURPOSE), (b"", PURPOSE), (SECRET_KEY, "")])
def test_an_empty_secret_key_or_purpose_is_refused(secret_key: str | bytes, purpose: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        ValueCipher(secret_key, purpose)
