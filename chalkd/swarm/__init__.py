"""The Swarm runtime: replicas as Docker Swarm services, placed by Swarm across the cluster's nodes.

``chalkd serve --runtime swarm --engine unix:///var/run/docker.sock --advertise-addr 10.0.0.5`` (the engine
is a swarm manager's). See :mod:`chalkd.swarm.runtime`.
"""
