"""Records the sample app's import-time side effects."""

EVENTS: list[str] = []
