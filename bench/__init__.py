"""Benchmark harness: fastproxy side by side with Envoy (and HAProxy, nginx). See __main__."""
