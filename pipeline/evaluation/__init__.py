"""Labelled evaluation of the product: detection recall, cross-camera IDF1, before/after adaptation."""
