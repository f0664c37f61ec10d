"""Shared test set-up: slow cases run only with EDGETRAIN_SLOW=1 (or -m slow)."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("EDGETRAIN_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow case: run with EDGETRAIN_SLOW=1 (make test-all)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _hermetic_cache(tmp_path_factory):
    """Tests never read or write the user's cache (captured graphs, pretrained weights)."""
    os.environ["EDGETRAIN_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgetrain-cache"))
    yield
