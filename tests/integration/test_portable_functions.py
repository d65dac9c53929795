"""The portable function tests (tests/portable/functions.py) on the process runtime, and what it refuses."""

from __future__ import annotations

import pytest

from chalkcompute import FunctionError, RemoteFunction
from chalkd.testing import Daemon
from tests.portable.functions import FunctionSuite


@pytest.fixture(scope="module")
def runtime_daemon(daemon: Daemon) -> Daemon:
    return daemon


class TestFunctionsOnProcess(FunctionSuite):
    """Every test of the suite, on the session's process-runtime daemon."""


def where() -> str:
    return "here"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("placement", "named"), [({"node": "swnode2"}, "node="),
                                                  ({"node_labels": {"zone": "a"}}, "node_labels=")])
def test_placement_on_a_node_is_refused_at_registration(daemon: Daemon, placement: dict, named: str) -> None:
    fn = RemoteFunction(where, name="pf_placed", **placement)
    with pytest.raises(FunctionError, match=rf"function 'pf_placed': {named} places replicas on a swarm's nodes, "
                                            r"which needs chalkd serve --runtime swarm \(this daemon runs the "
                                            r"process runtime\)"):
        fn.deploy()
    assert "pf_placed" not in [f.function_name for f in daemon_functions()]


def daemon_functions() -> list:
    from chalkcompute._client import Client, run_sync
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb

    client = Client.get()
    return list(run_sync(client.rpc(client.catalog.ListFunctions, pb.ListFunctionsRequest())).functions)
