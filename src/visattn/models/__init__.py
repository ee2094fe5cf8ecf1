"""Models built from the registered mechanisms. Importing registers them."""

from visattn.models.base import VisionModel
from visattn.models import transformer  # noqa: F401  (registers san_*)

__all__ = ["VisionModel"]
