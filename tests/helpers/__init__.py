"""Non-test modules of the test suite: loaders, subprocess children, servers, helpers.

Tests import them as ``helpers.<module>`` (``tests/`` is on ``sys.path`` under
pytest); the children and servers run as scripts by path.
"""
