"""What the app, the CLI and notebooks look through: the Pipeline facade, maps, reductions, plots, sessions."""
