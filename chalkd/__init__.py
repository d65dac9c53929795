"""chalkd: the daemon behind chalkcompute (queue, catalog, replicas, store)."""

__version__ = "0.1.0"
