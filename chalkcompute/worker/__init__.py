"""The in-replica worker: ``python -m chalkcompute.worker``.

It dials chalkd (never the caller), learns which function version it serves,
loads the function's shipped source, and runs assignments until drained.
"""
