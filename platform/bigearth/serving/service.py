"""One ingress's state, shared by its routes: the injected `Classifier`, `Retriever`, `Metrics` and `Segmenter`
(`bigearth.serving.interfaces`), the arguments, the API keys' digests, the body limit, this replica's request tally
and the models' descriptions (asked once)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from bigearth.api.schemas import ApiError
from bigearth.serving import web
from bigearth.serving.args import AppArgs
from bigearth.serving.bodies import read_body, read_upload
from bigearth.serving.guard import auth_status, authenticated, key_digests
from bigearth.serving.interfaces import Classifier, Metrics, Retriever, Segmenter
from bigearth.serving.metrics import Tally

log = logging.getLogger("bigearth.serve")


class Service:
    """What the routes of one app share (`request.app.state.service`)."""

    def __init__(
        self,
        classifier: Classifier,
        retriever: Retriever,
        metrics: Metrics,
        args: AppArgs,
        segmenter: Segmenter | None = None,
    ) -> None:
        self.classifier, self.retriever, self.metrics, self.args = classifier, retriever, metrics, args
        self.segmenter = segmenter
        self.keys = args.keys()  # NoApiKeysError (the app is not made) when require_auth finds none
        self.key_digests = key_digests(self.keys)
        log.warning(auth_status(self.keys))  # warning level: reaches the replica log whatever its setup
        self.limit = int(args.max_body_mb * 1024 * 1024)
        self.tally = Tally(metrics)  # sent to the metrics every second and before /metrics answers
        self.page = web.paths()
        self._model: dict[str, Any] | None = None
        self._seg_model: dict[str, Any] | None = None

    def authenticated(self, headers: Any) -> bool:
        """The request carries one of the keys (never true while auth is off: nobody is known then)."""
        return authenticated(headers, self.key_digests)

    async def model(self) -> dict[str, Any]:
        """The classifier's `describe()`, asked on first use."""
        if self._model is None:
            self._model = await self.classifier.describe()
        return self._model

    async def seg_model(self) -> tuple[Segmenter, dict[str, Any]]:
        """The segmenter and its `describe()` (asked on first use); a 404 `no_segmentation_model` when the service
        serves none."""
        if self.segmenter is None:
            raise ApiError(
                404,
                "this service serves no segmentation model: start it with segmentation_checkpoint "
                "(bigearth serve --segmentation-checkpoint RUN)",
                None,
                code="no_segmentation_model",
            )
        if self._seg_model is None:
            self._seg_model = await self.segmenter.describe()
        return self.segmenter, self._seg_model

    async def body(self, request: Any) -> bytes:
        return await read_body(request, self.limit, self.args.body_timeout_s)

    async def upload(self, request: Any) -> tuple[dict[str, np.ndarray], str | None]:
        return await read_upload(request, self.limit, self.args.body_timeout_s)

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """The classifier's answer for one patch; its batch size is counted."""
        result = await self.classifier.infer(inputs)
        self.tally.pending.batch_sizes.append(result["batch_size"])
        return result


def parse_json(body: bytes, model: type[BaseModel]) -> Any:
    """A JSON body as `model`, or a 422 naming the first field that is wrong."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or None
        raise ApiError(422, f"{field or 'body'}: {err['msg']}", field) from None
