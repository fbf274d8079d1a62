"""The suite-wide log scan finds what it is meant to find (so its silence means something)."""

import logging
import secrets
import types

from leak_scan import MINTED, LogRecorder, declared_secrets, find_leaks, remember_minted
from mcp_access_guard.testing import LocalAccess

TOKEN_SECRET_EXAMPLE = "not-a-real-secret-but-declared"


def test_a_logged_token_a_declared_secret_and_key_material_are_all_found() -> None:
    with LocalAccess() as issuer:
        token = issuer.user_token()
        pem = issuer.current_key.certificate_pem()
    recorder = LogRecorder()
    logger = logging.getLogger("leak-scan-self-test")
    logger.addHandler(recorder)
    logger.propagate = False
    try:
        logger.warning("clean line")
        assert find_leaks(recorder.texts, [token], [TOKEN_SECRET_EXAMPLE]) == []
        logger.warning("denied", extra={"detail": f"token={token}"})
        logger.warning("oops %s", TOKEN_SECRET_EXAMPLE)
        logger.warning(pem)
    finally:
        logger.removeHandler(recorder)
    leaks = find_leaks(recorder.texts, [token], [TOKEN_SECRET_EXAMPLE])
    assert leaks == [
        "1 token signature(s) appear in the log",
        f"a secret of {len(TOKEN_SECRET_EXAMPLE)} characters appears in the log",
        "key material ('-----BEGIN') appears in the log",
    ]
    assert all(token not in leak and TOKEN_SECRET_EXAMPLE not in leak for leak in leaks)


def test_declared_secrets_are_read_from_module_globals() -> None:
    module = types.ModuleType("test_example")
    module.SECRET = "tunnel-secret-1"  # type: ignore[attr-defined]
    module.ALL_SECRETS = ("one-secret-a", "short")  # type: ignore[attr-defined]
    module.PAIRS_SECRET_MAP = {"id.access": "client-secret-x"}  # type: ignore[attr-defined]
    module.PUBLIC = "not a secret at all"  # type: ignore[attr-defined]
    assert declared_secrets([module]) == {"tunnel-secret-1", "one-secret-a", "client-secret-x"}


def test_a_value_a_test_minted_and_registered_is_found() -> None:
    verifier = secrets.token_urlsafe(48)
    remember_minted(verifier, "short", None)
    assert verifier in MINTED
    assert "short" not in MINTED
    assert find_leaks(["clean line"], MINTED, []) == []
    assert find_leaks([f"code_verifier={verifier}&state=x"], MINTED, []) == ["1 token signature(s) appear in the log"]
