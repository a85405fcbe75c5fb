"""The version of the event gateway and of this client (one distribution)."""

__version__ = "0.2.0"
