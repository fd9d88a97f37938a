"""Statistics: batch-means standard errors of affinity averages."""
