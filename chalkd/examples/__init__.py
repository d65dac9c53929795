"""Runnable examples: ``python -m chalkd.examples.quickstart``."""
