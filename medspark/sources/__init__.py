"""medspark.sources."""
