"""A small user project for tests/unit/test_code.py: its code travels as source."""
