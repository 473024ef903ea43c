"""pytest plugin of mpm-events (registered through the ``pytest11`` entry point).

Fixtures:

``event_bus``
    A real :class:`~mpm_events.EventBus`, started on the test's event loop and
    stopped (draining it and shutting its consumers down) after the test. Needs
    pytest-asyncio; works in its ``auto`` and ``strict`` modes. To configure the
    bus, parametrize it indirectly::

        @pytest.mark.parametrize("event_bus", [{"max_queue_size": 10}], indirect=True)
        async def test_full_queue(event_bus): ...

    Without pytest-asyncio installed, a test that asks for it fails with a message
    saying so (the rest of the suite is unaffected).

``recording_bus``
    A fresh :class:`~mpm_events.testing.RecordingBus` (running, accepting, not
    delivering) for producer tests; needs no event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from mpm_events._core import EventBus
from mpm_events.testing import RecordingBus

_STOP_TIMEOUT = 10.0

try:
    import pytest_asyncio

    _HAVE_PYTEST_ASYNCIO = True
except ImportError:  # pragma: no cover - exercised only without pytest-asyncio
    _HAVE_PYTEST_ASYNCIO = False


def _bus_kwargs(request: pytest.FixtureRequest) -> dict[str, Any]:
    params = getattr(request, "param", None)
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise TypeError(f"event_bus parameters must be a dict of EventBus arguments: {params!r}")
    return params


if _HAVE_PYTEST_ASYNCIO:

    @pytest_asyncio.fixture
    async def event_bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
        """A started EventBus, stopped after the test."""
        bus = EventBus(**_bus_kwargs(request))
        await bus.start()
        try:
            yield bus
        finally:
            await bus.stop(timeout=_STOP_TIMEOUT)

else:
    # NOTE: another function name (the fixture keeps its name), so that type checkers
    # and stubtest see one event_bus, not a conditional redefinition.
    @pytest.fixture(name="event_bus")
    def _event_bus_unavailable() -> EventBus:
        """Unavailable: needs pytest-asyncio."""
        pytest.fail(
            "the mpm_events 'event_bus' fixture needs pytest-asyncio "
            "(pip install pytest-asyncio) to start the bus on the test's event loop",
            pytrace=False,
        )


@pytest.fixture
def recording_bus() -> RecordingBus:
    """A RecordingBus: records what producers publish, no runtime needed."""
    return RecordingBus()
