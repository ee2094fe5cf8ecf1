"""Models built from the registered mechanisms. Importing registers them."""

from visattn.models.base import VisionModel
from visattn.models import resnet  # noqa: F401  (registers the ResNet family)

__all__ = ["VisionModel"]
