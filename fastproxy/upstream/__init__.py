"""Upstream host management in the main process: active health checking, outlier detection."""
