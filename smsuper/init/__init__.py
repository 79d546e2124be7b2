"""The generic PID-1 machinery. Imports nothing SageMaker-specific."""
