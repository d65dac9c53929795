"""Entry point: ``python3 -m chalkcompute.agent`` or ``python3 path/to/chalkcompute/agent/__main__.py``.

    python3 -m chalkcompute.agent --socket /run/chalk-agent/agent.sock [--ready-file F] [-- CMD ARGS...]

Run by path, it loads this package under a private name instead of importing
``chalkcompute`` (whose ``__init__`` needs pyarrow and friends), so the agent
starts in any image that has a ``python3`` >= 3.9, and starts faster.
"""

from __future__ import annotations

import os
import sys

__all__: list = []

if __package__:
    from .server import main
else:
    import importlib.util

    _here = os.path.dirname(os.path.abspath(__file__))
    # Run as a script, our own directory is sys.path[0]: drop it, so that
    # `server` and `protocol` cannot shadow anything by their bare names.
    if sys.path and os.path.abspath(sys.path[0] or ".") == _here:
        del sys.path[0]
    _spec = importlib.util.spec_from_file_location(
        "_chalk_agent", os.path.join(_here, "__init__.py"), submodule_search_locations=[_here])
    assert _spec is not None and _spec.loader is not None
    _pkg = importlib.util.module_from_spec(_spec)
    sys.modules["_chalk_agent"] = _pkg
    _spec.loader.exec_module(_pkg)
    main = _pkg.main

if __name__ == "__main__":
    sys.exit(main())
