"""Pictures and tables of a run: rank heatmaps, rank per module type over steps, gates, activity."""
