"""Tools on top of training: compare, report, plots, summary, generate."""
