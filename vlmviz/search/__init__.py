"""Semantic search of an image library through a connector: index a folder, query it by text or image.

    from vlmviz.search import SearchIndex
    index = SearchIndex.create("~/Pictures", connector="photo")
    index.update()
    for hit in index.search("a cat on a sofa", k=5):
        print(f"{hit.score:.3f}  {hit.path}")

The default store (vlmviz.search.store) is float32 shards plus SQLite with exact top-k; vlmviz.search.ray_index
builds the same index on Ray Data when a library outgrows one machine.
"""
from .index import IndexCancelled, SearchIndex, default_index_dir, indexes_of, resolve_connector, scan
from .query import parse_query
from .store import Hit, IndexStoreError, ShardStore

__all__ = ["Hit", "IndexCancelled", "IndexStoreError", "SearchIndex", "ShardStore", "default_index_dir",
           "indexes_of", "parse_query", "resolve_connector", "scan"]
