"""What an operator sees: Prometheus metrics, health endpoints and `tidings queues`."""
