"""Models built from the registered mechanisms. Importing registers them."""

from visattn.models import (
    detection,  # noqa: F401  (registers maskrcnn, fasterrcnn, retinanet, fcos and their presets)
    gan,  # noqa: F401  (registers sagan32_g, sagan32_d, sagan64_g, sagan64_d)
    hierarchical,  # noqa: F401  (registers slide_swin_t, swin_t, slide_pvt_t, pvt_t)
    pct,  # noqa: F401  (registers pct, spct, pct_partseg)
    resnet,  # noqa: F401  (registers the ResNet family)
    segmentation,  # noqa: F401  (registers eanet_*, semantic_fpn, fpn_*)
    transformer,  # noqa: F401  (registers san_*)
)
from visattn.models.base import VisionModel
from visattn.models.eamlp import EAMLP
from visattn.models.features import FeatureExtractor, FeatureInfo
from visattn.models.heads import ExternalAttentionHead

__all__ = ["VisionModel", "EAMLP", "ExternalAttentionHead", "FeatureExtractor", "FeatureInfo"]
