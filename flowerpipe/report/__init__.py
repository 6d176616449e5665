"""Metrics from predictions, and the figures of the plot stage."""
