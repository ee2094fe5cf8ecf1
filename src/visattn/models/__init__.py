"""Models built from the registered mechanisms. Importing registers them."""

from visattn.models.base import VisionModel
from visattn.models import resnet  # noqa: F401  (registers the ResNet family)
from visattn.models import transformer  # noqa: F401  (registers san_*)
from visattn.models.heads import ExternalAttentionHead  # noqa: F401
from visattn.models.eamlp import EAMLP  # noqa: F401

__all__ = ["VisionModel", "EAMLP", "ExternalAttentionHead"]
