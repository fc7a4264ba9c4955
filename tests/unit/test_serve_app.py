"""The Serve application's placement, read from the built application graph (no Ray started)."""

from __future__ import annotations

from typing import Any

from bigearth.serving.app import HEAD_NODE_RESOURCE, build
from bigearth.serving.args import AppArgs


def _options(args: AppArgs) -> dict[str, dict[str, Any]]:
    """Each deployment's ray_actor_options, by name."""
    app = build(args)
    found: dict[str, dict[str, Any]] = {}
    todo = [app._bound_deployment]
    while todo:
        deployment = todo.pop()
        found[deployment.name] = deployment.ray_actor_options or {}
        todo += [a._bound_deployment for a in deployment.init_args if hasattr(a, "_bound_deployment")]
    return found


def test_the_http_front_sits_on_the_head_node_unless_told_otherwise() -> None:
    args = AppArgs(checkpoint="run", index="index", data="shards")
    on_head = _options(args)
    assert set(on_head) == {"Ingress", "Classifier", "Retriever", "Metrics"}
    for name in ("Ingress", "Metrics"):  # a lost worker node never takes the front along (tests/e2e/test_hosts_faults)
        assert on_head[name]["resources"] == {HEAD_NODE_RESOURCE: 0.001}
        assert on_head[name]["num_cpus"] == 0
    for name in ("Classifier", "Retriever"):  # the work spreads over every node
        assert "resources" not in on_head[name]
    anywhere = _options(args.model_copy(update={"ingress_on_head": False}))
    assert all("resources" not in o for o in anywhere.values())


def test_a_segmentation_checkpoint_adds_a_segmenter_beside_the_classifier() -> None:
    args = AppArgs(checkpoint="run", index="index", data="shards", replica_cpus=0.5, gpus_per_classifier=1)
    assert "Segmenter" not in _options(args)  # none without the option
    options = _options(args.model_copy(update={"segmentation_checkpoint": "seg-run"}))
    assert set(options) == {"Ingress", "Classifier", "Retriever", "Metrics", "Segmenter"}
    assert options["Classifier"] == {"num_cpus": 0.5, "num_gpus": 1}
    # the segmenter's GPUs are its own setting: a one-GPU node with the classifier on it still places it
    assert options["Segmenter"] == {"num_cpus": 0.5, "num_gpus": 0}
    shared = args.model_copy(
        update={"segmentation_checkpoint": "seg-run", "gpus_per_classifier": 0.5, "gpus_per_segmenter": 0.5}
    )
    options = _options(shared)
    assert options["Classifier"]["num_gpus"] == options["Segmenter"]["num_gpus"] == 0.5
