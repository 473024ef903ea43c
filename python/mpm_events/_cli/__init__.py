"""The inspecting commands of ``mpm-events``: ``tail``, ``stats``, ``dlq``, ``replay``,
``bench`` (one module each, imported only when its command runs).

:mod:`.commands` registers them with the parser (cheap to import: argparse only);
:mod:`.target` resolves ``--monitor``/``--backend`` and reports errors as one line;
:mod:`.output` writes JSON lines or, on a terminal with ``rich`` installed, tables;
:mod:`.monitor` is the standard-library client of a running monitor's HTTP API;
:mod:`.direct` reads and changes a shared log without a bus.
"""
