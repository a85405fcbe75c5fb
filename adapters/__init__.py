"""Outbound transports. Each one turns a claimed delivery into an :class:`~adapters.base.Outcome`;
the dispatcher never knows which transport (or fake) it is talking to."""
