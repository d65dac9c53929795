"""Runtimes start and stop replicas: ``process`` (subprocesses) and, later, ``docker``."""
