"""deploy/kserve: a ServingRuntime speaking the Open Inference Protocol (v2) and an
InferenceService using it, checked against KServe's published schemas (kserve-schemas.json,
cut from KServe's CRDs by tests/docker/kserve_schemas.py), and the runtime's container run.

No KServe runs here: what a cluster would do with them (download, route, scale) is unchecked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import tritonclient.grpc as triton

from service.settings import Settings
from tests.conftest import free_port
from tests.docker.conftest import Containers, render, tiny_model
from tests.docker.kserve_schemas import FACTS, MANIFESTS

PREFIX = "SPATIAL_DROPOUT_"
SETTINGS = {PREFIX + name.upper() for name in Settings.model_fields}
KSERVE_HTTP_PORT = 8080  # where KServe sends /v2 traffic, and its probes
KSERVE_GRPC_PORT = 8081  # where KServe sends h2c traffic

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> dict[str, Doc]:
    docs = render(MANIFESTS)
    assert sorted(doc["kind"] for doc in docs) == ["InferenceService", "ServingRuntime"]
    return {doc["kind"]: doc for doc in docs}


def runtime_container(rendered: dict[str, Doc]) -> Doc:
    (container,) = rendered["ServingRuntime"]["spec"]["containers"]
    result: Doc = container
    return result


@pytest.mark.parametrize("kind", ["ServingRuntime", "InferenceService"])
def test_matches_kserves_published_schema(rendered: dict[str, Doc], kind: str) -> None:
    facts = json.loads(FACTS.read_text(encoding="utf-8"))
    published = facts["schemas"][kind]
    assert rendered[kind]["apiVersion"] == published["apiVersion"]
    validator = jsonschema.Draft7Validator(published["schema"])
    errors = [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(rendered[kind])
    ]
    assert not errors, "\n".join(errors)


def test_the_runtime_speaks_v2_on_kserves_port_and_reads_mnt_models(
    rendered: dict[str, Doc],
) -> None:
    spec = rendered["ServingRuntime"]["spec"]
    assert spec["protocolVersions"] == ["v2"]
    assert spec["supportedModelFormats"] and all(f["name"] for f in spec["supportedModelFormats"])
    container = runtime_container(rendered)
    assert container["name"] == "kserve-container"  # the name KServe looks for
    assert container["args"][0] == "serve" and f"--port={KSERVE_HTTP_PORT}" in container["args"]
    assert f"--grpc-port={KSERVE_GRPC_PORT}" in container["args"]
    # KServe routes gRPC to the container port named h2c.
    assert container["ports"] == [
        {"name": "h2c", "containerPort": KSERVE_GRPC_PORT, "protocol": "TCP"}
    ]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env[f"{PREFIX}MODEL_REPOSITORY"] == "/mnt/models"
    assert set(env) <= SETTINGS, set(env) - SETTINGS
    for probe, path in (
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": KSERVE_HTTP_PORT}
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {"/data", "/tmp"}


def test_the_inference_service_uses_the_runtime_for_a_format_it_supports(
    rendered: dict[str, Doc],
) -> None:
    model = rendered["InferenceService"]["spec"]["predictor"]["model"]
    runtime = rendered["ServingRuntime"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"]


def test_the_runtime_container_serves_v2_with_the_arguments_kserve_gives_it(
    rendered: dict[str, Doc], containers: Containers, tmp_path: Path
) -> None:
    container = runtime_container(rendered)
    name = rendered["InferenceService"]["metadata"]["name"]
    env = {item["name"]: item["value"] for item in container["env"]}
    # /mnt/models as KServe leaves it for a storageUri of one object: the file, its name kept.
    models = tmp_path / "models"
    models.mkdir()
    (models / f"{name}.onnx").write_bytes(tiny_model())
    for path in (tmp_path, models, *models.iterdir()):  # readable by the container's uid 10001
        path.chmod(0o755)
    # As KServe runs it, but on loopback and free ports: only 127.0.0.1 is reachable here.
    port, grpc_port = free_port(), free_port()
    loopback = {
        "--host=0.0.0.0": "--host=127.0.0.1",
        f"--port={KSERVE_HTTP_PORT}": f"--port={port}",
        f"--grpc-port={KSERVE_GRPC_PORT}": f"--grpc-port={grpc_port}",
    }
    command = tuple(loopback.get(arg, arg) for arg in container["args"])
    assert all(arg in container["args"] for arg in loopback)
    served = containers.run(
        env=env,
        command=command,
        port=port,
        grpc_port=grpc_port,
        mounts={models: env[f"{PREFIX}MODEL_REPOSITORY"]},
    )
    assert httpx.get(f"{served.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{served.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{served.url}/v2").json()["name"]
    assert httpx.get(f"{served.url}/v2/models/{name}/ready").status_code == 200
    assert httpx.get(f"{served.url}/v2/models/other/ready").status_code == 404
    # The h2c port speaks the protocol over gRPC, to tritonclient's own client.
    client = triton.InferenceServerClient(served.grpc_target)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(name)
    finally:
        client.close()
