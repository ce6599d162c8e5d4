from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from container_helpers import BuiltImage, build_image


@pytest.fixture(scope="session")
def earshot_image() -> BuiltImage:
    """The image built from this checkout's Containerfile (cached layers make reruns fast)."""
    built = build_image()
    print(f"\nimage {built.tag}: {built.size / 1e6:.0f} MB (base {built.base_size / 1e6:.0f} MB);"
          f" seconds: {built.seconds}")
    return built


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs to fill (disk-full tests). Mounting needs root: a skip on a developer's
    machine, a failure under CI (which runs as root), where nothing may be skipped."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        why = f"cannot mount a small tmpfs here: {r.stderr.strip() or r.returncode}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
