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
