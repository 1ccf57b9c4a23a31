"""The ``embedded`` backend: collections in SQLite + FAISS files under a data directory.

Module map: ``state`` (what a collection holds), ``repair`` (open, reconcile index files with
SQLite), ``prepare`` (index vectors of rows, both spaces), ``writes``, ``reads`` (search),
``sampling`` (raw vectors, gap statistics), ``switch`` (transform lifecycle), ``collection``
(``EmbeddedCollection``, assembled from them). ``gapfix.store.Store`` holds them by name.
"""

from gapfix.store.embedded.collection import EmbeddedCollection

__all__ = ["EmbeddedCollection"]
