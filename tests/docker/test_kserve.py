"""deploy/kserve: a ServingRuntime speaking the Open Inference Protocol (v2) and an
InferenceService using it, checked against KServe's published schemas (kserve-schemas.json,
cut from KServe's CRDs by tests/docker/kserve_schemas.py), and the runtime's container run.

No KServe runs here: what a cluster would do with them (download, route, scale) is unchecked.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from service.settings import Settings
from tests.conftest import free_port
from tests.docker.conftest import Containers, render
from tests.docker.kserve_schemas import FACTS, MANIFESTS

PREFIX = "SPATIAL_DROPOUT_"
SETTINGS = {PREFIX + name.upper() for name in Settings.model_fields}
# Named by the runtime for the stored models that serve from KServe's /mnt/models; not settings
# yet. Once they are, this set empties (the last test says so).
PENDING_SETTINGS = {f"{PREFIX}MODEL_NAME", f"{PREFIX}MODEL_REPOSITORY"}
KSERVE_HTTP_PORT = 8080  # where KServe sends /v2 traffic, and its probes

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
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env[f"{PREFIX}MODEL_REPOSITORY"] == "/mnt/models"
    assert env[f"{PREFIX}MODEL_NAME"] == "{{.Name}}"  # KServe fills in the service's name
    assert set(env) <= SETTINGS | PENDING_SETTINGS, set(env) - SETTINGS - PENDING_SETTINGS
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
    rendered: dict[str, Doc], containers: Containers
) -> None:
    container = runtime_container(rendered)
    name = rendered["InferenceService"]["metadata"]["name"]
    env = {item["name"]: item["value"].replace("{{.Name}}", name) for item in container["env"]}
    # As KServe runs it, but on loopback and a free port: only 127.0.0.1 is reachable here.
    port = free_port()
    loopback = {
        "--host=0.0.0.0": "--host=127.0.0.1",
        f"--port={KSERVE_HTTP_PORT}": f"--port={port}",
    }
    command = tuple(loopback.get(arg, arg) for arg in container["args"])
    assert all(arg in container["args"] for arg in loopback)
    served = containers.run(env=env, command=command, port=port)
    assert httpx.get(f"{served.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{served.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{served.url}/v2").json()["name"]


def test_no_pending_setting_has_landed() -> None:
    landed = PENDING_SETTINGS & SETTINGS
    assert not landed, f"now settings: drop {sorted(landed)} from PENDING_SETTINGS"
