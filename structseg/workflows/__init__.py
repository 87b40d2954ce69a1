"""Workflows built on the engine: CRF search, the DAE protocol (seed 000), the demo."""
