"""Async event gateway: durable ingest, signed webhook delivery, mobile push fan-out."""

from gateway_client.version import __version__

__all__ = ["__version__"]
