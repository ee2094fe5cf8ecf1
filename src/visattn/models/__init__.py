"""Models built from the registered mechanisms. Importing registers them."""

from visattn.models.base import VisionModel

__all__ = ["VisionModel"]
