"""alloynet: identify aluminium alloys from X-ray transmission captures."""

__version__ = "0.1.0"
