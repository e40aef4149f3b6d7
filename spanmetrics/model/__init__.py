"""Plain data types shared by every layer: enums, clock, metric points."""
