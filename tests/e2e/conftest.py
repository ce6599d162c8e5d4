from __future__ import annotations

import pytest
from container_helpers import BuiltImage, build_image


@pytest.fixture(scope="session")
def earshot_image() -> BuiltImage:
    """The image built from this checkout's Containerfile (cached layers make reruns fast)."""
    built = build_image()
    print(f"\nimage {built.tag}: {built.size / 1e6:.0f} MB (base {built.base_size / 1e6:.0f} MB);"
          f" seconds: {built.seconds}")
    return built
