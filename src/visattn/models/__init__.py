"""Models built from the registered mechanisms. Importing registers them."""

from visattn.models.base import VisionModel
from visattn.models import resnet  # noqa: F401  (registers the ResNet family)
from visattn.models import transformer  # noqa: F401  (registers san_*)
from visattn.models.heads import ExternalAttentionHead  # noqa: F401
from visattn.models.eamlp import EAMLP  # noqa: F401
from visattn.models import hierarchical  # noqa: F401  (registers slide_swin_t, swin_t, slide_pvt_t, pvt_t)
from visattn.models.features import FeatureExtractor, FeatureInfo
from visattn.models import segmentation  # noqa: F401  (registers eanet_*, semantic_fpn, fpn_*)

__all__ = ["VisionModel", "EAMLP", "ExternalAttentionHead", "FeatureExtractor", "FeatureInfo"]
