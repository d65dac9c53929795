"""Sandboxes: long-lived isolated containers driven command by command (see :mod:`.manager`)."""
