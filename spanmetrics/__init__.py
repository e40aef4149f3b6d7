"""spanmetrics: OpenTelemetry spans in, mergeable RED metrics out.

Layers, with dependencies pointing one way (see README "Architecture"):
``model -> decode -> aggregate -> export -> topology -> cli``.
"""

__version__ = "0.1.0"
