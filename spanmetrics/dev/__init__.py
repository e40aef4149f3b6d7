"""Development tools, outside the runtime path: ``make run`` (:mod:`spanmetrics.dev.up`)
and its live view (:mod:`spanmetrics.dev.live`)."""
