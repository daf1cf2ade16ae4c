"""Reward scorers behind one interface, ensembles and rank aggregation."""
