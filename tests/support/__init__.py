"""Scaffolding shared by the tests and benchmarks, never shipped in the wheel: an
in-process Flower Grid (:mod:`loopback`), generated facilities (:mod:`sites`) and a local
federation server laid out as docs/federation.md tells an operator (:mod:`testbed`).

The tests import it as ``support`` (``tests/`` is on ``sys.path`` through its
``conftest.py``); benchmarks put ``tests/`` on ``sys.path`` themselves."""
