"""medspark.inference."""
