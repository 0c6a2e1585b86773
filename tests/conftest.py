"""Shared fixtures. Real-Caffe tests take `caffe_engine`: under CI=true a missing Caffe fails them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_RELEASE = Path(os.environ.get("HARRISON_RELEASE_LISTS") or REPO.parent / "shared" / "harrison-release")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def caffe_engine():
    """Real BVLC Caffe on CPU. Fails loudly in CI when it is missing; skips elsewhere."""
    from harrison.engines import engine_class

    cls = engine_class("caffe")
    found, why = cls.available(None)
    if not found:
        message = f"real Caffe is not usable: {why}; run scripts/install_caffe.sh"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return cls.create(None)


@pytest.fixture(scope="session")
def release_dir() -> Path:
    """The real HARRISON release lists: ``HARRISON_RELEASE_LISTS``, else ../shared/harrison-release (required in CI)."""
    if not (SHARED_RELEASE / "data_list.txt").exists():
        message = f"the release lists are not at {SHARED_RELEASE}; set HARRISON_RELEASE_LISTS to their folder"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_RELEASE
