"""Storage adapters.  Each module is one technology; none connects on import."""
