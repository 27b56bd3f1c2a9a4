"""collision package."""
