"""Async event gateway: durable ingest, signed webhook delivery, mobile push fan-out."""

__version__ = "0.1.0"
