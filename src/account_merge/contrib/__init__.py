"""Integrations with web frameworks; each is an optional extra, never imported by default."""
