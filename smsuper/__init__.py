"""smsuper: one file that makes any CPython image a correct SageMaker container."""

__version__ = "0.1.0"
