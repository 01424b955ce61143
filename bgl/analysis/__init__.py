"""Queries and plots over study results (the Parquet store in `bgl.results`)."""
