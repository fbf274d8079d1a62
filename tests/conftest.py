import os

import pytest
from hypothesis import settings

# In CI the examples are drawn from a fixed seed: a run is reproducible, and a new finding shows up in a developer's
# randomised run rather than as a surprise at submission.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
