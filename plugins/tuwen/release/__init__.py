"""Releases: params, writers, export, the dataset card, trainer formats, takedowns."""
