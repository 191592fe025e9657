"""medspark.preprocess."""
