"""Content-based retrieval: embeddings of every pair in a Qdrant collection, searched by vector with payload
filters. `schema`: what is stored and how it is filtered; `backends`: the `VectorIndex` interface and `open_index`;
`edge` / `qdrant`: the two engines; `embed`: vectors from a model; `indexer`: the Ray Data job that fills an index;
`evaluation`: the retrieval metrics."""

from bigearth.retrieval.backends import DEFAULT_COLLECTION, IndexSettings, VectorIndex, VectorIndexError, open_index
from bigearth.retrieval.edge import EdgeIndex
from bigearth.retrieval.qdrant import QdrantIndex
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
