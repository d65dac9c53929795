"""Handlers' output kept by the daemon: the store (:mod:`chalkd.logs.store`), its gRPC service
(:mod:`chalkd.logs.service`) and ``chalkd logs`` (:mod:`chalkd.logs.cli`)."""
