"""Build earshot's container image the way the tests can here, and run it with podman.

No registry image can be pulled on the test machines, and pip inside a build cannot verify
the package index's TLS chain, so:

* the base is Debian bookworm made by ``debootstrap --variant=minbase`` from Debian's own
  packages, trimmed the way ``debian:bookworm-slim`` is, and imported with ``podman import``
  (``Containerfile``'s ``BASE`` build argument);
* the wheels (earshot's dependencies, and setuptools/wheel to build it) are downloaded on the
  host for the image's Python (Debian bookworm's 3.11.2) and handed to the build as
  ``--build-arg WHEELS=DIR``, a directory inside the build context (hard links into the
  repository for the build's duration only);
* podman runs with ``--runtime runc`` (crun fails on this sandbox's cgroup layout), explicit
  lowered ulimits (the sandbox cannot raise them) and the host's network.

Those flags and the wheelhouse belong to the tests, not to what users run. Both the base and
the wheelhouse are cached between runs (the base as a podman image, the wheels under
``~/.cache/earshot-tests/container/wheels-<hash of pyproject.toml>``), and podman's layer
cache keeps the dependency layers while only the source changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOOKWORM_PYTHON = "3.11.2"  # Debian bookworm's python3 (markers are evaluated against it)
EXTRAS = "server,opus,redis,postgres,s3"  # the Containerfile's default
BASE_TAG = "localhost/earshot-test-base:bookworm"
IMAGE_TAG = "localhost/earshot:test"
# `podman run`/`build` flags this sandbox needs (see the module docstring)
SANDBOX_FLAGS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                 "--network", "host"]
IMAGE_UID = 10001  # the image's user (Containerfile)
# what debian:bookworm-slim leaves out (its dpkg excludes and apt clean-up), for a base of
# the same size
SLIM_DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
"""
SLIM_APT_CLEAN = """\
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""


def need_tools(*tools: str) -> None:
    """Skip when a tool is missing, except under CI, where that is a failure."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        msg = f"{', '.join(missing)} not installed (apt-get install {' '.join(missing)})"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def podman(*args: str, timeout: float = 120,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """``podman --runtime runc ARGS``; output as text. A failure shows podman's own words."""
    proc = subprocess.run(["podman", "--runtime", "runc", *args], capture_output=True,
                          timeout=timeout, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} … failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def cache_root() -> Path:
    base = os.environ.get("EARSHOT_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "earshot-tests")
    path = Path(base) / "container"
    path.mkdir(parents=True, exist_ok=True)
    return path


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


def ensure_base() -> float:
    """The debootstrap base as a podman image (made once); returns the seconds it took."""
    if image_exists(BASE_TAG):
        return 0.0
    need_tools("debootstrap")
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("debootstrap needs root to make the base image")
        pytest.skip("debootstrap needs root to make the base image")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        proc = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs)],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise AssertionError(f"debootstrap failed:\n{proc.stdout[-3000:]}\n"
                                 f"{proc.stderr[-3000:]}")
        (rootfs / "etc/dpkg/dpkg.cfg.d/slim-excludes").write_text(SLIM_DPKG_EXCLUDES)
        (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(SLIM_APT_CLEAN)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                     "usr/share/man", "usr/share/locale", "usr/share/info"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file() and p.name not in ("lock", "copyright"):
                    p.unlink()
                elif p.is_dir() and p.name != "partial":
                    shutil.rmtree(p)
        for p in (rootfs / "var/cache/apt").glob("*.bin"):
            p.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["podman", "import", "-", BASE_TAG], stdin=tar.stdout,
                             capture_output=True, text=True, timeout=300)
        assert tar.stdout is not None
        tar.stdout.close()
        assert tar.wait(60) == 0 and imp.returncode == 0, imp.stderr[-3000:]
    return time.monotonic() - t0


def requirements(extras: str = EXTRAS) -> list[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = list(project["dependencies"])
    for extra in extras.split(","):
        out += project["optional-dependencies"][extra]
    return out


def pip_command() -> list[str]:
    """A pip for this machine's Python 3.11 (the test venv's, or the system's)."""
    for python in (sys.executable, shutil.which("python3")):
        if python and subprocess.run([python, "-m", "pip", "--version"],
                                     capture_output=True).returncode == 0:
            return [python, "-m", "pip"]
    pytest.fail("no pip to download the image's wheels with (python3 -m pip)")


def _wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(meta).decode())
    return msg.get_all("Requires-Dist") or []


def missing_for_target(wheels: Path, python_full: str = BOOKWORM_PYTHON) -> list[str]:
    """Requirements the image's Python needs that the host's pip left out.

    pip evaluates environment markers against the interpreter it runs on, even with
    ``--python-version`` (3.11.7 here: redis' ``async-timeout; python_full_version <
    "3.11.3"`` is skipped, and the image's 3.11.2 wants it)."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    have = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels.glob("*.whl")}
    env = {**default_environment(), "python_full_version": python_full,
           "python_version": ".".join(python_full.split(".")[:2]), "extra": ""}
    out: dict[str, str] = {}
    for wheel in wheels.glob("*.whl"):
        for line in _wheel_requirements(wheel):
            req = Requirement(line)
            name = canonicalize_name(req.name)
            if name in have or req.marker is None or not req.marker.evaluate(env):
                continue
            req.marker = None
            out[name] = str(req)
    return sorted(out.values())


def ensure_wheelhouse(extras: str = EXTRAS) -> tuple[Path, float]:
    """Every wheel the image needs, for its Python; cached by the hash of pyproject.toml."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()
                         + BOOKWORM_PYTHON.encode()).hexdigest()[:16]
    target = cache_root() / f"wheels-{key}"
    if (target / ".complete").exists():
        return target, 0.0
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="wheels-", dir=cache_root()))
    pip = pip_command()
    wanted = [*requirements(extras), "setuptools>=77", "wheel"]  # (the build's backend)
    for _ in range(5):  # a fix-up may pull in a requirement with markers of its own
        proc = subprocess.run([*pip, "download", "--quiet", "--dest", str(tmp),
                               "--only-binary=:all:", *wanted],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise AssertionError(f"pip download failed:\n{proc.stderr[-3000:]}")
        wanted = missing_for_target(tmp)
        if not wanted:
            break
    (tmp / ".complete").write_text(json.dumps(sorted(p.name for p in tmp.glob("*.whl"))))
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(target)
    tmp.rename(target)
    return target, time.monotonic() - t0


@contextlib.contextmanager
def wheels_in_context(wheels: Path) -> object:
    """The wheelhouse inside the build context (hard links), for the build only. Its name
    is always the same: a build argument that changes defeats the layer cache."""
    name = ".wheels-test"
    dest = ROOT / name
    shutil.rmtree(dest, ignore_errors=True)  # (left by an interrupted run)
    try:
        shutil.copytree(wheels, dest, copy_function=os.link)
    except OSError:  # another filesystem: copy
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(wheels, dest)
    try:
        yield name
    finally:
        shutil.rmtree(dest, ignore_errors=True)


@dataclass
class BuiltImage:
    tag: str
    size: int  # bytes, as podman reports it
    base_size: int
    seconds: dict[str, float]  # base, wheels, build


def build_image(tag: str = IMAGE_TAG) -> BuiltImage:
    need_tools("podman", "runc")
    seconds = {"base": ensure_base()}
    wheels, seconds["wheels"] = ensure_wheelhouse()
    t0 = time.monotonic()
    with wheels_in_context(wheels) as name:
        podman("build", "--format", "docker",  # (OCI images carry no HEALTHCHECK)
               *SANDBOX_FLAGS, "--build-arg", f"BASE={BASE_TAG}",
               "--build-arg", f"WHEELS={name}", "-t", tag, "-f", "Containerfile", str(ROOT),
               timeout=1800)
    seconds["build"] = time.monotonic() - t0

    def size(t: str) -> int:
        return int(podman("image", "inspect", "--format", "{{.Size}}", t).stdout.strip())

    built = BuiltImage(tag, size(tag), size(BASE_TAG), seconds)
    (cache_root() / "last-build.json").write_text(json.dumps(built.__dict__, indent=1))
    return built
