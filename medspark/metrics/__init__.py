"""medspark.metrics."""
