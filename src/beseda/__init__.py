"""beseda — a self-hosted chat messenger."""

__version__ = "0.1.0"
