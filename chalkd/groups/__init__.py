"""Scaling groups: long-running HTTP apps served at their own port, proxied to ready replicas."""
