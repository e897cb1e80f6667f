"""The image docker/build.py builds, run by podman as a user would run it: read-only root,
/data a volume, /tmp a tmpfs, stopped with SIGTERM, replicas sharing one PostgreSQL."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest

from tests.api.helpers import fp32_input
from tests.docker.conftest import Containers, image_size, podman, tiny_model, ulimits
from tests.graceful import apply_while_stopping, dropped_whole_at_half

if TYPE_CHECKING:
    from tests.postgres import PostgresServer

# The Debian base bootstrapped here is 200 MB before the service; python:3.12-slim is smaller.
LEAN_BYTES = 480 * 2**20
X = np.arange(2 * 4 * 4 * 16, dtype=np.float32).reshape(2, 4, 4, 16)


def apply(url: str, layer: str, seed: int) -> list[list[bool]]:
    answer = httpx.post(
        f"{url}/apply",
        json={
            "layer": layer,
            "training": True,
            "seed": seed,
            "return_mask": True,
            "input": X.tolist(),
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    mask: list[list[bool]] = answer.json()["mask"]
    return mask


def infer(url: str, model: str, seed: int) -> list[float]:
    answer = httpx.post(
        f"{url}/v2/models/{model}/infer",
        json={
            "inputs": [fp32_input(X)],
            "parameters": {"training": True, "seed": seed},
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    data: list[float] = answer.json()["outputs"][0]["data"]
    return data


def test_the_image_is_lean_and_keeps_its_healthcheck(image: str) -> None:
    assert image_size(image) < LEAN_BYTES
    (inspected,) = json.loads(podman("image", "inspect", image))
    # podman keeps HEALTHCHECK only in the docker image format (OCI has no such field).
    assert "/healthz" in " ".join(inspected["Healthcheck"]["Test"])
    config = inspected["Config"]
    assert config["User"] == "10001:10001"


def test_the_image_has_the_compiled_passes_and_no_compiler(image: str) -> None:
    # Built in the build stage, which has gcc; the run stage gets the extensions, not gcc.
    probe = (
        "import shutil; from service.core import fastkernel; from service.codecs import numbers; "
        "print(fastkernel.available(), numbers.available(), "
        "shutil.which('gcc') or shutil.which('cc'))"
    )
    found = podman(
        "run", "--rm", "--network", "host", *ulimits(), "--entrypoint", "python", image, "-c", probe
    )
    assert found.split() == ["True", "True", "None"], found


def test_read_only_serves_as_uid_10001_passes_its_healthcheck_and_keeps_data_for_data(
    containers: Containers,
) -> None:
    volume = containers.volume()
    served = containers.run(volume=volume)
    assert httpx.get(f"{served.url}/healthz").json() == {"status": "ok"}
    podman("healthcheck", "run", served.name)  # the image's HEALTHCHECK, once, on demand
    # The server is PID 1, running as 10001 (real, effective, saved and filesystem ids).
    status = served.exec("cat", "/proc/1/status")
    ids = {line.split(":")[0]: line.split()[1:] for line in status.splitlines()}
    assert ids["Uid"] == ["10001"] * 4 and ids["Gid"] == ["10001"] * 4
    assert (
        podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", served.name).strip()
        == "true"
    )

    # Some use of everything that touches disk: the store, onnxruntime (its cache), ONNX export.
    made = httpx.post(f"{served.url}/layers", json={"name": "sd", "rate": 0.5, "seed": 7})
    assert made.status_code == 201, made.text
    applied = httpx.post(
        f"{served.url}/apply",
        json={"layer": "sd", "training": True, "return_mask": True, "input": [[[[1, 2, 3]]]]},
    )
    assert applied.json()["mask"] == [[True, False, True]]  # the README's seed-7 mask
    assert len(infer(served.url, "sd", 7)) == X.size
    assert httpx.get(f"{served.url}/layers/sd/onnx").status_code == 200
    # The volume holds the database and nothing else (no caches, no HOME).
    files = served.exec("ls", "-A", "/data").split()
    assert files and all(name.startswith("layers.sqlite3") for name in files), files


def _store_layer(url: str) -> object:
    made = httpx.post(f"{url}/layers", json={"name": "kept", "rate": 0.25, "seed": 5})
    assert made.status_code == 201, made.text
    return _read_layer(url)


def _read_layer(url: str) -> object:
    layer = httpx.get(f"{url}/layers/kept").json()
    return layer["id"], layer["rate"], layer["seed"], apply(url, "kept", 9)


def store_model(url: str, name: str, seed: int) -> bytes:
    """The tiny model with a spatial dropout composed after its output, stored as ``name``."""
    layer = f"{name}-dropout"
    made = httpx.post(f"{url}/layers", json={"name": layer, "rate": 0.5})
    assert made.status_code == 201, made.text
    composed = httpx.post(
        f"{url}/layers/{layer}/compose",
        params={"after": "output", "seed": seed},
        content=tiny_model(),
        headers={"content-type": "application/octet-stream"},
        timeout=30,
    )
    assert composed.status_code == 200, composed.text
    stored = httpx.put(
        f"{url}/models/{name}",
        content=composed.content,
        headers={"content-type": "application/octet-stream"},
        timeout=30,
    )
    assert stored.status_code == 201, stored.text
    assert stored.json()["sha256"] == hashlib.sha256(composed.content).hexdigest()
    return composed.content


def _store_model(url: str) -> object:
    store_model(url, "kept-model", 4)
    return _read_model(url)


def _read_model(url: str) -> object:
    described = httpx.get(f"{url}/models/kept-model").json()
    data = httpx.get(f"{url}/models/kept-model/onnx").content
    assert hashlib.sha256(data).hexdigest() == described["sha256"]
    return described["sha256"], data, infer(url, "kept-model", 9)


# What a restart keeps: for each kind of stored thing, (store one, read it back); each returns
# what must come back the same.
SURVIVORS: dict[str, tuple[Callable[[str], object], Callable[[str], object]]] = {
    "layer": (_store_layer, _read_layer),
    "model": (_store_model, _read_model),
}


@pytest.mark.parametrize("kind", sorted(SURVIVORS))
def test_stored_things_survive_a_container_restart(containers: Containers, kind: str) -> None:
    store, read = SURVIVORS[kind]
    served = containers.run()
    before = store(served.url)
    podman("restart", "--time", "30", served.name)
    served.wait_ready()
    assert read(served.url) == before


def test_sigterm_lets_a_slow_request_finish_with_200_then_exits_0(containers: Containers) -> None:
    served = containers.run()
    assert httpx.post(f"{served.url}/layers", json={"name": "slow", "rate": 0.5}).status_code == 201
    request = {"layer": "slow", "training": True, "seed": 3, "input": X.tolist()}
    response = apply_while_stopping(
        served.url, request, lambda: podman("kill", "--signal", "TERM", served.name), timeout=90
    )
    assert response.status_code == 200, response.text
    assert dropped_whole_at_half(response.json()["output"], X)
    assert podman("wait", served.name, timeout=90).strip() == "0", served.logs()


def test_two_containers_on_one_postgres_share_layers_models_and_masks(
    containers: Containers, postgres: PostgresServer
) -> None:
    env = {"SPATIAL_DROPOUT_DATABASE_URL": postgres.new_database()}
    one, two = containers.run(env=env), containers.run(env=env)
    assert httpx.post(f"{one.url}/layers", json={"name": "shared", "rate": 0.5}).status_code == 201
    assert httpx.post(f"{two.url}/layers", json={"name": "other", "rate": 0.3}).status_code == 201
    for served in (one, two):
        names = {layer["name"] for layer in httpx.get(f"{served.url}/layers").json()["items"]}
        assert names == {"shared", "other"}
    for layer in ("shared", "other"):
        assert apply(one.url, layer, 11) == apply(two.url, layer, 11)
        assert infer(one.url, layer, 12) == infer(two.url, layer, 12)
    assert apply(one.url, "shared", 11) != apply(one.url, "shared", 13)  # seeds do matter
    # A model stored through one is served by the other, bit for bit, for the same seed.
    model = store_model(one.url, "shared-model", 6)
    assert httpx.get(f"{two.url}/models/shared-model/onnx").content == model
    assert infer(one.url, "shared-model", 12) == infer(two.url, "shared-model", 12)
    assert infer(two.url, "shared-model", 12) != infer(two.url, "shared-model", 13)
