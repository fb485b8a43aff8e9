"""HTTP service over :class:`~cmcrec.recommender.Recommender` (FastAPI); see ``docs/service.md``."""

from cmcrec.service.app import create_app

__all__ = ["create_app"]
