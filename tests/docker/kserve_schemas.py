"""KServe's published schemas for the resources deploy/kserve uses, cut down to what it uses.

KServe's CRDs (kserve/kserve ``config/crd/full/``) hold each resource's OpenAPI schema; the
InferenceService one alone is ~2 MB. ``kserve-schemas.json`` beside this module keeps, for each
kind, only the properties deploy/kserve's manifests set, each with its schema as KServe wrote it,
the ``required`` lists, and ``additionalProperties: false`` on every object that lists its
properties, as ``kubectl apply --validate=strict`` refuses unknown fields. A field the manifests
start to use is then refused until the file is made again from the CRDs:

    python -m tests.docker.kserve_schemas /path/to/kserve  # a checkout of kserve/kserve

which records the commit it read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT

FACTS = Path(__file__).with_name("kserve-schemas.json")
MANIFESTS = ROOT / "deploy" / "kserve"
CRDS = {
    "ServingRuntime": ("config/crd/full/serving.kserve.io_servingruntimes.yaml", "v1alpha1"),
    "InferenceService": ("config/crd/full/serving.kserve.io_inferenceservices.yaml", "v1beta1"),
}

Schema = dict[str, Any]


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    return docs


def prune(schema: Schema, used: list[Any]) -> Schema:
    """``schema`` keeping only what the values in ``used`` reach."""
    kept = {key: value for key, value in schema.items() if key not in {"properties", "items"}}
    kept.pop("description", None)
    if "properties" in schema:
        objects = [value for value in used if isinstance(value, dict)]
        names = sorted({name for value in objects for name in value})
        kept["properties"] = {
            name: prune(schema["properties"][name], [v[name] for v in objects if name in v])
            for name in names
            if name in schema["properties"]
        }
        kept.setdefault("additionalProperties", False)
    elif isinstance(schema.get("additionalProperties"), dict):
        values = [v for value in used if isinstance(value, dict) for v in value.values()]
        kept["additionalProperties"] = prune(schema["additionalProperties"], values)
    if "items" in schema:
        items = [item for value in used if isinstance(value, list) for item in value]
        kept["items"] = prune(schema["items"], items)
    return kept


def make(kserve: Path) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "-C", str(kserve), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    docs = manifests()
    schemas = {}
    for kind, (path, version) in CRDS.items():
        crd = yaml.safe_load((kserve / path).read_text(encoding="utf-8"))
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
        of_kind = [doc for doc in docs if doc["kind"] == kind]
        schemas[kind] = {
            "apiVersion": f"{crd['spec']['group']}/{version}",
            "schema": prune(served["schema"]["openAPIV3Schema"], of_kind),
        }
    return {
        "source": {
            "repository": "https://github.com/kserve/kserve",
            "commit": commit,
            "files": {kind: path for kind, (path, _) in CRDS.items()},
        },
        "schemas": schemas,
    }


if __name__ == "__main__":
    FACTS.write_text(json.dumps(make(Path(sys.argv[1])), indent=1) + "\n", encoding="utf-8")
