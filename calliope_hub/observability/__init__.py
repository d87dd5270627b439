"""What the hub tells operators: Prometheus metrics (/hub/metrics) and CloudWatch EMF log lines."""
