"""Plots of predictions against ground truth."""

from wtal.viz.timeline import plot_timeline

__all__ = ["plot_timeline"]
