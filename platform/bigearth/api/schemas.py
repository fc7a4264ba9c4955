"""The HTTP API's request and response models, shared by the Serve application and the client SDK (one
definition, so the two cannot drift). Version: `/v1`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from bigearth.archive.names import S2_ID_PATTERN, S2_ID_RE
from bigearth.retrieval.schema import SearchFilter as SearchFilter  # the filter of the API: re-exported for the SDK

API_VERSION = "v1"
VectorName = Literal["fused", "s1", "s2"]
MAX_K = 1000
# Every number a request carries is bounded here, and the bounds are in the OpenAPI document (docs/api.md).
MAX_OFFSET = 1_000_000_000  # a page of patch ids past the archive's 590,326 pairs is empty, not an error
MAX_PAGE = 10_000  # patch ids per page of GET /v1/patches
MAX_SCALE = 8  # quicklooks: 120 px x 8 = 960 px
#: The largest magnitude of a query vector's value: far above any model's features or logits, small enough that
#: the engines' float32 norms stay finite (a 4096-d vector of 1e6 squares to 4e15).
MAX_VECTOR_VALUE = 1e6
PATCH_ID_HELP = (
    "an archived pair's Sentinel-2 patch name: S2[AB]_MSIL2A_<YYYYMMDD>T<hhmmss>_<h>_<v> (v1) or "
    "S2[AB]_MSIL2A_<YYYYMMDD>T<hhmmss>_N9999_R<orbit>_T<tile>_<hh>_<vv> (v2)"
)


def _patch_id(value: str) -> str:
    if not S2_ID_RE.fullmatch(value):
        raise PydanticCustomError(
            "patch_id", "{value} is not a valid patch id: expected " + PATCH_ID_HELP, {"value": repr(value[:80])}
        )
    return value


#: A patch id, checked (before any lookup) with the pattern the OpenAPI document states: a malformed id is a 422
#: naming the form expected, a well-formed one not in the archive a 404.
PatchId = Annotated[
    str,
    AfterValidator(_patch_id),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": S2_ID_PATTERN,
            "description": PATCH_ID_HELP,
            "examples": ["S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57", "S2A_MSIL2A_20170613T101031_87_48"],
        }
    ),
]
VectorValue = Annotated[float, Field(ge=-MAX_VECTOR_VALUE, le=MAX_VECTOR_VALUE)]
#: Exact search compares the query with every point (no HNSW): k is bounded, and the Retriever refuses it on a
#: collection of more than EXACT_MAX_POINTS points (docs/api.md "Limits").
MAX_EXACT_K = 100
EXACT_MAX_POINTS = 200_000
MAX_VECTOR_DIMS = 4096  # longer than any model's vectors (the largest, a ResNet-50's fused features: 2048)


class ApiError(Exception):
    """An error the API reports as `{"error", "message", "field"}` with an HTTP status (4xx for bad input)."""

    def __init__(self, status: int, message: str, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.code = code or {
            400: "bad_request",
            401: "unauthorized",
            404: "not_found",
            408: "timeout",
            405: "method_not_allowed",
            413: "too_large",
            415: "unsupported_media_type",
            422: "invalid",
            429: "busy",
            503: "unavailable",
        }.get(status, "error")

    def body(self) -> dict[str, Any]:
        return ErrorBody(error=self.code, message=self.message, field=self.field).model_dump()

    def __reduce__(self) -> tuple[Any, ...]:  # keep the fields when Ray ships the exception between processes
        return (ApiError, (self.status, self.message, self.field, self.code))


#: What each error status of the service means; every one answers the error model (`ErrorBody`), and every
#: operation of the OpenAPI document lists those it can answer.
ERROR_STATUSES = {
    400: "an unreadable multipart body, or a client that disconnected before sending the whole body",
    401: "a missing or wrong API key (only when the service has keys)",
    404: "no archived pair with this patch id (or: the pair has no reference map; the service serves no "
    "segmentation model, error `no_segmentation_model`)",
    405: "a method this path does not take",
    408: "the request body sent nothing for `body_timeout_s` (or, in plain text from Serve's proxy, the request took "
    "longer than its `request_timeout_s`)",
    413: "the request body (its Content-Length, or the bytes streamed so far, or an .npz member inflated) is over "
    "the limit",
    415: "a content type this operation does not take",
    422: "a request that breaks the schema or names something the service does not have: `field` says which",
    500: "an unexpected failure: the message carries only an error id, under which the service log has the rest",
    503: "starting up, or a model or index replica is restarting (or, in plain text from Serve's proxy, every "
    "ingress replica is busy): retry after `Retry-After` seconds",
}


class ServiceError(Exception):
    """Client side: the service answered with an error: `status`, and its `error` code, `message` and `field`."""

    def __init__(self, status: int, error: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {error}: {message}" + (f" (field: {field})" if field else ""))
        self.status, self.error, self.message, self.field = status, error, message, field


class ErrorBody(BaseModel):
    error: str = Field(description="a stable code: invalid, not_found, too_large, unauthorized, unavailable, ...")
    message: str = Field(description="what was wrong and what was expected")
    field: str | None = Field(None, description="the request field, band or parameter at fault")


class ModelInfo(BaseModel):
    name: str = Field(description="model name and fusion, e.g. 'tiny/late'")
    version: str = Field(description="checkpoint folder and the first 12 hex digits of the weights' SHA-256")
    bands: list[str]
    num_classes: int
    classes: list[str]


class ClassifyByIdRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patch_id: PatchId
    threshold: float = Field(0.5, gt=0, lt=1)


class ClassifyResponse(BaseModel):
    patch_id: str | None = None
    probabilities: dict[str, float] = Field(description="class name -> probability, in the nomenclature's order")
    labels: list[str] = Field(description="classes with probability above threshold (as the evaluation metrics)")
    threshold: float
    model: ModelInfo


class SegmentByIdRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patch_id: PatchId


class LegendEntry(BaseModel):
    name: str
    colour: str = Field(description="the class's colour in the map, `#rrggbb` (its CORINE Land Cover colour)")


class SegmentResponse(BaseModel):
    """A predicted class map: the PNG (base64) and each class's share of its scored pixels."""

    patch_id: str | None = None
    classes: list[str] = Field(description="class names in index order (the PNG's palette indices)")
    shares: dict[str, float] = Field(description="class name -> share of the map's scored pixels, in index order")
    scored_pixels: int = Field(description="pixels of the map that hold a class")
    png: str = Field(
        description="the map as a base64 paletted PNG (120x120): palette index = class index, its colour the "
        "legend's; 255 (no class) transparent"
    )
    legend: list[LegendEntry]
    model: ModelInfo

    @property
    def png_bytes(self) -> bytes:
        """The PNG of the map, decoded."""
        import base64

        return base64.b64decode(self.png)


class SearchRequest(BaseModel):
    """Query by `patch_id` (an archived pair's stored vector), by `vector`, or (multipart) by an uploaded patch."""

    model_config = ConfigDict(extra="forbid")
    patch_id: PatchId | None = None
    vector: list[VectorValue] | None = Field(None, max_length=MAX_VECTOR_DIMS)
    k: int = Field(10, ge=1, le=MAX_K)
    using: VectorName = Field("fused", description="the archive's vectors to search")
    query_modality: VectorName | None = Field(
        None, description="which vector of the query to use (default: `using`); `s1` with `using=s2` is cross-modal"
    )
    filter: SearchFilter | None = None
    exact: bool = Field(
        False,
        description=f"exact search instead of HNSW: k <= {MAX_EXACT_K}, and only on a collection of at most "
        f"{EXACT_MAX_POINTS} points",
    )
    include_query: bool = Field(False, description="keep the query pair itself among the results")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if self.patch_id is not None and self.vector is not None:
            raise ValueError("give either patch_id or vector, not both")
        if self.vector is not None and self.query_modality not in (None, self.using):
            raise ValueError("query_modality applies to patch and upload queries; a vector is searched as given")
        return self

    @field_validator("exact")
    @classmethod
    def _exact_is_bounded(cls, v: bool, info: ValidationInfo) -> bool:
        k = info.data.get("k", 0)
        if v and k > MAX_EXACT_K:
            raise ValueError(f"exact search returns at most k={MAX_EXACT_K} hits, k={k} asked; use HNSW for more")
        return v


class Location(BaseModel):
    lat: float
    lon: float


class PatchInfo(BaseModel):
    patch_id: str
    s1_name: str
    labels: list[str]
    labels43: list[str] | None = None
    split: str
    country: str
    tile: str
    s2_acquisition: str
    s1_acquisition: str
    epsg: int
    ulx: float
    uly: float
    location: Location
    snow: bool
    cloud: bool


class PatchList(BaseModel):
    patch_ids: list[str]
    offset: int
    total: int = Field(description="patch ids in the split (or in the shard set)")
    split: str | None = None


class BrowseRequest(BaseModel):
    """A page of the archived pairs a filter matches (the web page's grid); `cursor` from the previous page."""

    model_config = ConfigDict(extra="forbid")
    filter: SearchFilter | None = None
    limit: int = Field(24, ge=1, le=500)
    cursor: str | None = Field(
        None, max_length=64, description="`next_cursor` of the previous page (none: the first page)"
    )


class BrowseItem(BaseModel):
    patch_id: str
    payload: dict[str, Any]


class BrowseResponse(BaseModel):
    items: list[BrowseItem]
    total: int = Field(description="pairs the filter matches")
    next_cursor: str | None = Field(None, description="the next page's cursor; none after the last page")


class Facets(BaseModel):
    """What the archive holds, for filter choices: pairs per value of each field, the model's classes, and whether
    land-cover maps are served."""

    total: int
    split: dict[str, int]
    country: dict[str, int]
    season: dict[str, int]
    labels: dict[str, int]
    classes: list[str] = Field(description="the model's classes, in its output order")
    vectors: list[str] = Field(description="the index's vectors (fused, s1, s2): which searches exist")
    segmentation: bool = Field(False, description="the service serves a segmentation model (POST /v1/segment)")
    reference_maps: bool = Field(False, description="the shard set holds reference maps (GET .../reference.png)")


class SearchHit(BaseModel):
    patch_id: str
    score: float
    payload: dict[str, Any]


class SearchResponse(BaseModel):
    hits: list[SearchHit]
    k: int
    using: VectorName
    query_modality: VectorName
    query_patch_id: str | None = None
    vector_kind: str | None = Field(
        None,
        description="what the searched vectors are: aligned (S1 and S2 in one trained space), logits (each "
        "modality's share of the class logits) or features (the fused pooled features)",
    )
    took_ms: float


class Ready(BaseModel):
    ready: bool
    model: ModelInfo | None = Field(None, description="the model served: only in an answer to a request with a key")
    index: dict[str, Any] | None = Field(None, description="the index served: only with a key, as `model`")
    detail: str | None = None
