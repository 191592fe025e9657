"""medspark.tables."""
