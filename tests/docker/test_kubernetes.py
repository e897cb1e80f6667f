"""deploy/kubernetes renders with ``kubectl kustomize``, passes ``kubernetes-validate --strict``,
says what a cluster needs to run the service safely, and its Deployment runs on podman.

No cluster runs here: ``podman play kube`` runs the rendered Deployment as a pod instead, which
proves the image, settings, Secret, volumes and security context work together, not that a
kubelet schedules it.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.settings import Settings
from tests.conftest import ROOT, free_port
from tests.docker.conftest import Container, limits, podman, render, tool, unique

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = {"base": KUBERNETES, "postgres": KUBERNETES / "overlays" / "postgres"}
PREFIX = "SPATIAL_DROPOUT_"
SETTINGS = {PREFIX + name.upper() for name in Settings.model_fields}
SECRET_SETTINGS = {f"{PREFIX}DATABASE_URL", f"{PREFIX}API_TOKENS"}
UID = 10001  # docker/Dockerfile's USER

Doc = dict[str, Any]


def one(docs: list[Doc], kind: str) -> Doc:
    (found,) = [doc for doc in docs if doc["kind"] == kind]
    return found


def container_of(docs: list[Doc]) -> Doc:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    result: Doc = container
    return result


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    return render(OVERLAYS[request.param])


def test_renders_and_passes_kubernetes_validate_strict(rendered: list[Doc], tmp_path: Path) -> None:
    kinds = {doc["kind"] for doc in rendered}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    assert {"ConfigMap", "Secret"} <= kinds
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(rendered), encoding="utf-8")
    validate = tool("kubernetes-validate", "pip install kubernetes-validate")
    done = subprocess.run(
        [validate, "--strict", "--quiet", str(manifest)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_probes_resources_and_a_locked_down_non_root_pod(rendered: list[Doc]) -> None:
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    container = container_of(rendered)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    config = one(rendered, "ConfigMap")["data"]
    assert ports == {
        "http": int(config[f"{PREFIX}PORT"]),
        "grpc": int(config[f"{PREFIX}GRPC_PORT"]),
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    for bound in ("requests", "limits"):
        assert set(container["resources"][bound]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # The root is read-only: HOME and caches live on /tmp, the database on /data.
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/tmp", "/data"} <= mounts


def test_settings_from_a_configmap_secrets_from_a_secret(rendered: list[Doc]) -> None:
    container = container_of(rendered)
    config, secret = one(rendered, "ConfigMap"), one(rendered, "Secret")
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    assert set(config["data"]) <= SETTINGS - SECRET_SETTINGS
    from_secret = {
        env["name"]: env["valueFrom"]["secretKeyRef"]
        for env in container["env"]
        if "valueFrom" in env
    }
    assert set(from_secret) == SECRET_SETTINGS
    for name, ref in from_secret.items():
        assert ref == {"name": secret["metadata"]["name"], "key": name}
    assert set(secret["stringData"]) == SECRET_SETTINGS


def test_the_grace_period_outlasts_the_drain_and_the_graceful_shutdown(
    rendered: list[Doc],
) -> None:
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]
    data = one(rendered, "ConfigMap")["data"]
    graceful = int(
        data.get(f"{PREFIX}GRACEFUL_SHUTDOWN_SECONDS")
        or Settings.model_fields["graceful_shutdown_seconds"].default
    )
    drain = float(data[f"{PREFIX}DRAIN_SECONDS"])
    probe = pod["containers"][0]["readinessProbe"]
    # The drain outlasts the readiness probe's failing, so no request meets a closed port.
    assert drain > probe["periodSeconds"] * probe["failureThreshold"]
    assert pod["terminationGracePeriodSeconds"] > drain + graceful


def test_service_budget_and_autoscaler_all_point_at_the_deployment(rendered: list[Doc]) -> None:
    deployment = one(rendered, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service, budget = one(rendered, "Service"), one(rendered, "PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    named = {port["name"] for port in container_of(rendered)["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} == named == {"http", "grpc"}
    target = one(rendered, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_sqlite_holds_one_pod_and_the_overlay_runs_replicas_on_postgresql() -> None:
    base, postgres = render(OVERLAYS["base"]), render(OVERLAYS["postgres"])

    def shape(docs: list[Doc]) -> tuple[Any, ...]:
        spec = one(docs, "Deployment")["spec"]
        scaler = one(docs, "HorizontalPodAutoscaler")["spec"]
        url = one(docs, "Secret")["stringData"][f"{PREFIX}DATABASE_URL"]
        claims = [v for v in spec["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
        return (
            spec["replicas"],
            spec["strategy"]["type"],
            scaler["maxReplicas"],
            url.split(":", 1)[0],
            len(claims),
            sum(doc["kind"] == "PersistentVolumeClaim" for doc in docs),
        )

    assert shape(base) == (1, "Recreate", 1, "sqlite", 1, 1)
    replicas, strategy, most, scheme, claims, pvcs = shape(postgres)
    assert replicas >= 2 and most > replicas and strategy == "RollingUpdate"
    assert (scheme, claims, pvcs) == ("postgresql", 0, 0)
    assert one(postgres, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2


def for_podman(
    docs: list[Doc], image: str, port: int, grpc_port: int, suffix: str
) -> tuple[list[Doc], Doc]:
    """The base's ConfigMap, claim and Deployment as ``podman play kube`` can run them here,
    and the Secret's data as a podman secret wants it.

    What changes, and why: unique names (this machine may run other pods); the image under
    test; the service on 127.0.0.1 and free ports, HTTP and gRPC (host network only, so no
    container port list: podman refuses port mappings there, and probes name the port by
    number). podman 4.3
    stores a played Secret as YAML but reads ``secretKeyRef`` as JSON of base64 values, so the
    Secret becomes a podman secret made beforehand.
    """
    config = one(docs, "ConfigMap")
    claim = one(docs, "PersistentVolumeClaim")
    deployment = one(docs, "Deployment")
    secret = one(docs, "Secret")
    names = {
        doc["metadata"]["name"]: f"{doc['metadata']['name']}-{suffix}"
        for doc in (config, claim, deployment)
    }
    for doc in (config, claim, deployment):
        doc["metadata"]["name"] = names[doc["metadata"]["name"]]
    config["data"].update(
        {
            f"{PREFIX}HOST": "127.0.0.1",
            f"{PREFIX}PORT": str(port),
            f"{PREFIX}GRPC_PORT": str(grpc_port),
        }
    )
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    container["image"] = image
    del container["ports"]
    for probe in ("livenessProbe", "readinessProbe"):
        container[probe]["httpGet"]["port"] = port
    container["envFrom"][0]["configMapRef"]["name"] = config["metadata"]["name"]
    for env in container["env"]:
        env["valueFrom"]["secretKeyRef"]["name"] = f"{secret['metadata']['name']}-{suffix}"
    renamed = {volume["name"]: f"{volume['name']}-{suffix}" for volume in pod["volumes"]}
    for volume in pod["volumes"]:
        volume["name"] = renamed[volume["name"]]
        if "persistentVolumeClaim" in volume:
            volume["persistentVolumeClaim"]["claimName"] = claim["metadata"]["name"]
    for mount in container["volumeMounts"]:
        mount["name"] = renamed[mount["name"]]
    data = {
        key: base64.b64encode(value.encode()).decode()
        for key, value in secret["stringData"].items()
    }
    podman_secret = {"name": f"{secret['metadata']['name']}-{suffix}", "data": data}
    return [config, claim, deployment], podman_secret


@pytest.fixture
def played(image: str, tmp_path: Path) -> Iterator[Container]:
    """The base's Deployment run by ``podman play kube``; taken down and removed after."""
    port, grpc_port, suffix = free_port(), free_port(), unique("kube")
    docs, secret = for_podman(render(OVERLAYS["base"]), image, port, grpc_port, suffix)
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    (tmp_path / "secret.json").write_text(json.dumps(secret["data"]), encoding="utf-8")
    # play kube has no --ulimit or --runtime: containers.conf gives both.
    conf = tmp_path / "containers.conf"
    ulimits = ", ".join(f'"{name}={value}"' for name, value in limits().items())
    conf.write_text(
        f'[containers]\ndefault_ulimits = [{ulimits}]\n[engine]\nruntime = "runc"\n',
        encoding="utf-8",
    )
    env = {"CONTAINERS_CONF": str(conf)}
    claim = one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    podman("secret", "create", secret["name"], str(tmp_path / "secret.json"))
    # podman builds its pods' pause image on first use; remove it if these tests made it.
    pause = podman("images", "--quiet", "--filter", "reference=localhost/podman-pause")
    try:
        podman("play", "kube", "--network", "host", str(manifest), env=env, timeout=300)
        deployment = one(docs, "Deployment")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        name = f"{deployment['metadata']['name']}-pod-0-{container['name']}"
        yield Container(name, port, grpc_port).wait_ready()
    finally:
        podman("play", "kube", "--down", str(manifest), env=env, check=False, timeout=300)
        podman("volume", "rm", "--force", claim, check=False)
        podman("secret", "rm", secret["name"], check=False)
        if not pause.strip():
            made = podman("images", "--quiet", "--filter", "reference=localhost/podman-pause")
            for pause_image in made.split():
                podman("rmi", pause_image, check=False)


def test_the_deployment_runs_as_a_pod_and_answers_v2_infer(played: Container) -> None:
    assert httpx.get(f"{played.url}/healthz").json() == {"status": "ok"}
    made = httpx.post(f"{played.url}/layers", json={"name": "sd", "rate": 0.5, "seed": 7})
    assert made.status_code == 201, made.text
    answer = httpx.post(
        f"{played.url}/v2/models/sd/infer",
        json={
            "inputs": [
                {"name": "input", "shape": [1, 1, 1, 3], "datatype": "FP32", "data": [1, 2, 3]}
            ],
            "parameters": {"training": True},
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [2.0, 0.0, 6.0]  # the README's seed-7 mask
    # The pod's security context reached the container.
    status = played.exec("cat", "/proc/1/status")
    fields = {line.split(":")[0]: line.split()[1:] for line in status.splitlines()}
    assert fields["Uid"] == [str(UID)] * 4
    assert fields["CapEff"] == ["0000000000000000"]
    assert (
        podman("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", played.name).strip()
        == "true"
    )
    files = played.exec("ls", "-A", "/data").split()
    assert files and all(name.startswith("layers.sqlite3") for name in files), files
