"""The `local_access` and `local_access_saas` fixtures, registered through the `pytest11` entry point for anyone
who installs us."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .testing import LocalAccess, LocalAccessSaaS


@pytest.fixture
def local_access() -> Iterator[LocalAccess]:
    """A started `LocalAccess` issuer on 127.0.0.1, stopped after the test."""
    from .testing import LocalAccess

    with LocalAccess() as issuer:
        yield issuer


@pytest.fixture
def local_access_saas() -> Iterator[LocalAccessSaaS]:
    """A started `LocalAccessSaaS` application on 127.0.0.1 (nobody logged in yet: see `login_as`), stopped after
    the test."""
    from .testing import LocalAccessSaaS

    with LocalAccessSaaS() as application:
        yield application
