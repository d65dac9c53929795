"""How the daemon turns an image spec into something a replica can run in."""
