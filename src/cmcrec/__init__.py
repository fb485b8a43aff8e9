"""cmcrec: Contrastive Matrix Completion recommender."""

from cmcrec._version import __version__

__all__ = ["__version__"]
