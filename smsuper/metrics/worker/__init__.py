"""Metrics written from the gunicorn processes (never imported by PID 1, which only reads their files)."""
