"""GVSL Studio engine: volumes, data, training, matching, segmentation, embedding, CLI (Qt-free)."""

from gvsl_app.io.volume import Volume

__all__ = ["Volume"]
__version__ = "0.1.0"
