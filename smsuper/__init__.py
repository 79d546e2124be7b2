"""smsuper: one file that makes any CPython image a correct SageMaker container."""

__version__ = "0.1.0"


def build_id() -> str:
    """The content hash the zip build stamped in, or 'source' outside a pyz."""
    try:
        from . import _build  # written into the pyz by build_zipapp.py

        return _build.BUILD_ID
    except ImportError:
        return "source"
