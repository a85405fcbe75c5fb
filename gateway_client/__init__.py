"""A typed async client for the event gateway's HTTP API.

Installs without the server (``pip install event-gateway``: aiohttp and pydantic only)::

    from gateway_client import GatewayClient

    async with GatewayClient("http://127.0.0.1:8080", api_key) as gw:
        accepted = await gw.emit("order.created", {"order_id": 1001})
"""

from gateway_client.client import (
    UNSET,
    DeliveryOutcome,
    GatewayAPIError,
    GatewayClient,
    GatewayClientError,
    GatewayConnectionError,
    Tail,
)

__all__ = [
    "UNSET",
    "DeliveryOutcome",
    "GatewayAPIError",
    "GatewayClient",
    "GatewayClientError",
    "GatewayConnectionError",
    "Tail",
]
