"""Build docker/Dockerfile with docker or podman, whichever is installed (``make image``).

With docker, this is ``docker build``. With podman it also copes with hosts that cannot reach
an image registry: when the official ``python`` base cannot be pulled, it bootstraps a Debian
bookworm base from Debian's packages with mmdebstrap and passes it through the Dockerfile's
``PYTHON_IMAGE`` argument, saying so. That base is kept as a local image and reused on later
builds, unless ``--fresh-base`` (CI) asks for a new one.

The tests build the image with this script too (tests/docker/conftest.py). Standard library
only, so ``python3 docker/build.py`` works without the project's virtual environment.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
LOCAL_BASE = "localhost/spatial-dropout-base:bookworm"
# What the official python:3.x-slim image gives the Dockerfile: a python with pip and venv.
# Debian's python is "externally managed" (PEP 668); the image is the only user of it.
DEBIAN_PACKAGES = "python3,python3-pip,python3-venv,python-is-python3,ca-certificates"
PULL_TIMEOUT_SECONDS = 120


def say(message: str) -> None:
    print(f"build.py: {message}", file=sys.stderr, flush=True)


def official_base() -> str:
    """The Dockerfile's default ``PYTHON_IMAGE``."""
    found = re.search(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    if found is None:
        raise SystemExit(f"{DOCKERFILE} has no default PYTHON_IMAGE")
    return found.group(1)


def pick_engine(requested: str | None) -> str:
    if requested:
        return requested
    for engine in ("podman", "docker"):
        if shutil.which(engine):
            return engine
    raise SystemExit("neither podman nor docker is installed")


def quiet(*command: str, timeout: float = PULL_TIMEOUT_SECONDS) -> bool:
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def qualified(image: str) -> str:
    """``python:3.12-slim`` as podman needs it without a short-name search list."""
    first = image.split("/", 1)[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if "/" in image else f"docker.io/library/{image}"


def bootstrap_base(tag: str) -> None:
    """A python base image from Debian's packages alone: mmdebstrap, then podman import."""
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("the base image cannot be pulled and mmdebstrap is not installed")
    started = time.monotonic()
    earlier = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="sd-base-") as scratch:
        tarball = Path(scratch) / "base.tar"
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={DEBIAN_PACKAGES}",
                # No manuals, docs, translations, apt lists or caches: nothing reads them.
                *(f"--dpkgopt=path-exclude=/usr/share/{p}/*" for p in ("man", "doc", "locale")),
                "--customize-hook=rm -rf $1/var/lib/apt/lists/* $1/var/cache/apt/*",
                "bookworm",
                str(tarball),
            ],
            check=True,
        )
        subprocess.run(
            ["podman", "import", "--change", "ENV PIP_BREAK_SYSTEM_PACKAGES=1", str(tarball), tag],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    if earlier:  # the base it replaces, unless images built on it still need it
        quiet("podman", "rmi", earlier)
    say(f"bootstrapped {tag} with mmdebstrap in {time.monotonic() - started:.0f} s")


def podman_base(requested: str | None, fresh: bool) -> str | None:
    """The ``PYTHON_IMAGE`` to pass podman, or None for the Dockerfile's own default."""
    if requested:
        return requested
    default = official_base()
    if quiet("podman", "image", "exists", default) or quiet("podman", "pull", qualified(default)):
        return None
    say(
        f"cannot pull {default}: building on a Debian bookworm base bootstrapped from Debian's "
        f"packages with mmdebstrap, PYTHON_IMAGE={LOCAL_BASE}"
    )
    if fresh or not quiet("podman", "image", "exists", LOCAL_BASE):
        bootstrap_base(LOCAL_BASE)
    else:
        say(f"reusing the base bootstrapped earlier ({LOCAL_BASE}; --fresh-base makes a new one)")
    return LOCAL_BASE


def pip_settings_mounts() -> list[str]:
    """This host's system-wide pip settings, mounted read-only where pip inside RUN looks.

    Some hosts reach the package index only through them (a CA bundle, constraints). The
    per-user settings are left out: they may name local folders the build cannot see. Mounts
    are not layers, so the image keeps none of them.
    """
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "debug"],
        capture_output=True,
        text=True,
        check=False,
    )
    paths: set[Path] = set()
    section = ""
    for line in done.stdout.splitlines():
        if not line.startswith(" "):
            section = line.strip().rstrip(":")
            continue
        if section != "global":
            continue
        entry = line.strip()
        if entry.endswith(", exists: True"):
            paths.add(Path(entry.removesuffix(", exists: True")))
        elif entry.startswith(("global.cert:", "global.constraint:")):
            named = Path(entry.split(":", 1)[1].strip())
            paths.add(named.parent if entry.startswith("global.cert:") else named)
    mounts = []
    for path in sorted(paths):
        if path.exists():
            mounts += ["--volume", f"{path}:{path}:ro"]
    return mounts


def build(engine: str, tag: str, python_image: str | None, fresh_base: bool) -> None:
    started = time.monotonic()
    command = [engine, "build", "--file", str(DOCKERFILE), "--tag", tag]
    if engine == "podman":
        python_image = podman_base(python_image, fresh_base)
        command += [
            # RUN fails under podman's default isolation on cgroup v1 hosts; chroot works.
            "--isolation",
            "chroot",
            # The OCI image format has no HEALTHCHECK: podman would drop it.
            "--format",
            "docker",
            "--network",
            "host",
            # No cache: buildah 1.28 can hand a cached build stage to RUN --mount as an empty
            # directory. And no layers kept of the build stage, which would linger untagged.
            "--layers=false",
            *pip_settings_mounts(),
        ]
    if python_image:
        command += ["--build-arg", f"PYTHON_IMAGE={python_image}"]
    say(" ".join(command))
    subprocess.run([*command, str(ROOT)], check=True)
    say(f"built {tag} with {engine} in {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tag", default="spatial-dropout:latest")
    parser.add_argument("--engine", choices=("podman", "docker"), default=None)
    parser.add_argument(
        "--python-image", default=os.environ.get("PYTHON_IMAGE") or None, help="base image"
    )
    parser.add_argument(
        "--fresh-base", action="store_true", help="bootstrap the local base anew (podman)"
    )
    args = parser.parse_args(argv)
    build(pick_engine(args.engine), args.tag, args.python_image, args.fresh_base)


if __name__ == "__main__":
    main()
