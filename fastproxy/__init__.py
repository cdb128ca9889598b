"""fastproxy: an Envoy-compatible sidecar proxy on a compiled core."""

__version__ = "0.1.0"
