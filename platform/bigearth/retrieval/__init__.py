"""Content-based retrieval: embeddings of every pair in a Qdrant collection, searched by vector with payload
filters (`schema` says what is stored, `backends` the two engines, `indexer` the Ray Data job that fills an index,
`evaluation` the retrieval metrics)."""

from bigearth.retrieval.backends import (
    DEFAULT_COLLECTION,
    EdgeIndex,
    IndexSettings,
    QdrantIndex,
    VectorIndex,
    VectorIndexError,
    open_index,
)
from bigearth.retrieval.schema import Hit, IndexRecord, SearchFilter, point_id

__all__ = [
    "DEFAULT_COLLECTION",
    "EdgeIndex",
    "Hit",
    "IndexRecord",
    "IndexSettings",
    "QdrantIndex",
    "SearchFilter",
    "VectorIndex",
    "VectorIndexError",
    "open_index",
    "point_id",
]
