"""Shared fixtures: every service test runs on every store of this package."""

from __future__ import annotations

pytest_plugins = ["pytester", "pg"]
