"""Topology configuration: the YAML model, its defaults and its loader."""
