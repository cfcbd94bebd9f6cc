"""Reads studies back from MLflow (never imports the trainer): Pareto fronts, plots, tables."""
