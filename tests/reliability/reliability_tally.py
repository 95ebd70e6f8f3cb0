"""What the reliability tests did, counted as they run and printed at the end of the session
(kills survived, faults injected, races run, anything lost), so the numbers quoted for
issue #9 come from a run, not from reading the parameters.

Test modules ``from reliability_tally import tally_fixture`` and take the ``tally`` fixture (a
``collections.Counter``) to add to it. (Not a ``conftest.py``: a second one would shadow
``from conftest import ...`` in the other tests.)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

TALLY: Counter[str] = Counter()
_PLUGIN = "trainresults-reliability-tally"


class _Summary:
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not TALLY:
            return
        terminalreporter.section("reliability tally")
        for key in sorted(TALLY):
            terminalreporter.write_line(f"{key}: {TALLY[key]}")


@pytest.fixture(name="tally")
def tally_fixture(request: pytest.FixtureRequest) -> Counter[str]:
    manager = request.config.pluginmanager
    if not manager.has_plugin(_PLUGIN):
        manager.register(_Summary(), _PLUGIN)
    return TALLY
