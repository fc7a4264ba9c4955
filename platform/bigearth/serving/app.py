"""The Ray Serve application: an ingress (the FastAPI application of `bigearth.serving.http`) composing a `Classifier`
(model replicas, dynamic batching), a `Retriever` (the vector index and the shard set) and, with
`segmentation_checkpoint`, a `Segmenter` (a segmentation model's replicas, batched alike).

    serve run bigearth.serving.app:build checkpoint=RUN index=INDEX data=SHARDS    # or serve/config.yaml
    bigearth serve --checkpoint RUN --index INDEX --data SHARDS                     # the same, locally

Routes (the OpenAPI page at /docs is the reference): POST /v1/classify, POST /v1/segment, POST /v1/search, GET
/v1/patches/{id}, GET /v1/patches/{id}/rgb.png, GET /v1/patches/{id}/reference.png, GET /healthz, GET /readyz, GET
/metrics. Bad input gets a 4xx JSON error (`bigearth.api.schemas.ErrorBody`) naming the field; the service keeps
answering.
"""

from __future__ import annotations

from typing import Any

from bigearth.serving.args import AppArgs
from bigearth.serving.metrics import MetricsHub

__all__ = ["AppArgs", "MetricsHub", "build"]


HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's resource of the head node (ray._common.constants)


def build(args: AppArgs) -> Any:
    """The application: `Ingress(Classifier, Retriever)` with replicas, batching and resources from `args`."""
    from ray import serve

    from bigearth.serving.deployments import Classifier, Retriever, Segmenter  # imports Ray Serve: not for AppArgs

    cls_opts: dict[str, Any] = {
        "max_ongoing_requests": args.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": args.replica_cpus, "num_gpus": args.gpus_per_classifier},
    }
    if args.classifier_max_replicas and args.classifier_max_replicas > args.classifier_replicas:
        cls_opts["autoscaling_config"] = {
            "min_replicas": args.classifier_replicas,
            "max_replicas": args.classifier_max_replicas,
            "target_ongoing_requests": max(2, args.max_batch_size // 2),
        }
    else:
        cls_opts["num_replicas"] = args.classifier_replicas
    classifier = serve.deployment(name="Classifier", **cls_opts)(Classifier).bind(
        args.checkpoint, args.replica_cpus, args.max_batch_size, args.batch_wait_timeout_s
    )
    segmenter = None
    if args.segmentation_checkpoint:
        segmenter = serve.deployment(
            name="Segmenter",
            num_replicas=args.segmenter_replicas,
            max_ongoing_requests=args.max_ongoing_requests,
            ray_actor_options={"num_cpus": args.replica_cpus, "num_gpus": args.gpus_per_segmenter},
        )(Segmenter).bind(
            args.segmentation_checkpoint, args.replica_cpus, args.max_batch_size, args.batch_wait_timeout_s
        )
    retriever = serve.deployment(
        name="Retriever",
        num_replicas=args.retriever_replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_cpus": min(args.replica_cpus, 1.0)},
    )(Retriever).bind(args.index, args.collection, args.data, args.qdrant_api_key_file)
    from bigearth.serving.ingress import make_ingress

    ingress_cls = make_ingress(serve)
    # The HTTP front (no CPU of its own) beside Serve's controller on the head: a request in flight to an Ingress on
    # a worker node whose link is cut hangs (measured on separate hosts) until Ray gives the connection up.
    front: dict[str, Any] = {"num_cpus": 0}
    if args.ingress_on_head:
        front["resources"] = {HEAD_NODE_RESOURCE: 0.001}
    metrics = serve.deployment(name="Metrics", num_replicas=1, max_ongoing_requests=1000, ray_actor_options=front)(
        MetricsHub
    ).bind()
    ingress = serve.deployment(
        name="Ingress",
        num_replicas=args.ingress_replicas,
        max_ongoing_requests=args.max_ongoing_requests * 2,
        ray_actor_options=front,
    )(ingress_cls)
    return ingress.bind(classifier, retriever, metrics, args.model_dump(), segmenter)
