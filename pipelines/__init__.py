"""Preference-data pipelines: generate candidates, score them with rewards, rank, write datasets."""
