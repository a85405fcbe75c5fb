"""Moved to :mod:`gateway_client` (installable without the server); this name keeps old
imports working for one more minor version."""

import warnings

from gateway_client.client import *  # noqa: F403
from gateway_client.client import GatewayClient as GatewayClient

warnings.warn("gateway.client moved to gateway_client; import from there",
              DeprecationWarning, stacklevel=2)
