"""Logical plans and their compilation to Dask graphs."""
