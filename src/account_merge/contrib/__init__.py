"""Glue for web frameworks, one module per framework (optional extras)."""
