import logging
import os
import sys

import pytest
from hypothesis import settings

from leak_scan import MINTED, LogRecorder, declared_secrets, find_leaks
from mcp_access_guard import testing

# In CI the examples are drawn from a fixed seed: a run is reproducible, and a new finding shows up in a developer's
# randomised run rather than as a surprise at submission.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

_recorder = LogRecorder()
_minted: list[str] = []


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_configure(config: pytest.Config) -> None:
    # Every decision is logged during the suite, and every record is kept for the scan at the end.
    logging.getLogger().addHandler(_recorder)
    logging.getLogger("mcp_access_guard").setLevel(logging.DEBUG)
    sign = testing.LocalAccess.sign

    def recording_sign(self: testing.LocalAccess, *args: object, **kwargs: object) -> str:
        token = sign(self, *args, **kwargs)  # type: ignore[arg-type]
        _minted.append(token)
        return token

    testing.LocalAccess.sign = recording_sign  # type: ignore[method-assign]

    # The Access for SaaS provider's id_tokens, and its opaque credentials (codes, access and refresh tokens, the
    # client secret): the scan looks for each whole, as it looks for a signature.
    saas_sign = testing.LocalAccessSaaS.sign
    saas_opaque_token = testing.LocalAccessSaaS.opaque_token

    def recording_saas_sign(self: testing.LocalAccessSaaS, *args: object, **kwargs: object) -> str:
        token = saas_sign(self, *args, **kwargs)  # type: ignore[arg-type]
        if not token.endswith("."):  # alg none: no signature to look for
            _minted.append(token)
        return token

    def recording_opaque_token(self: testing.LocalAccessSaaS) -> str:
        token = saas_opaque_token(self)
        _minted.append(token)
        return token

    testing.LocalAccessSaaS.sign = recording_saas_sign  # type: ignore[method-assign]
    testing.LocalAccessSaaS.opaque_token = recording_opaque_token  # type: ignore[method-assign]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No token, secret or key material in anything the suite logged; a leak fails the run."""
    test_modules = [module for name, module in sys.modules.items() if name.startswith("test_")]
    leaks = find_leaks(_recorder.texts, [*_minted, *MINTED], declared_secrets(test_modules))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if reporter is not None:
        summary = "; ".join(leaks) if leaks else "none found"
        reporter.ensure_newline()
        reporter.write_line(
            f"log scan: {len(_recorder.texts)} records, {len(_minted) + len(MINTED)} tokens minted, credential leaks: "
            f"{summary}"
        )
