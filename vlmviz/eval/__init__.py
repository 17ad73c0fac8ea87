"""Pure metrics: retrieval and geometry (metrics), the open-set report (openset), lens scoring (lens_score)."""
