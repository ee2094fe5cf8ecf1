"""visattn: alternatives to global self-attention for vision, verified and benchmarked.

Every mechanism maps (B, C, H, W) -> (B, C_out, H, W) and is created by name::

    import visattn
    attn = visattn.create_attention("external", 64)
    model = visattn.create_model("resnet26", num_classes=10, attention="lambda")
"""

# First: importing fpmode flushes subnormal floats to zero before torch starts its thread pool,
# unless VISATTN_KEEP_DENORMALS=1 (see visattn/fpmode.py).
from visattn.fpmode import flush_denormals  # isort: skip
from visattn import flops as _flops  # noqa: F401  (registers FLOP formulas)
from visattn.layers import SpatialAttention, TokenAdapter
from visattn.layers.base import work_limit
from visattn.layers.relpos import attention_from_conv
from visattn.layers.sets import create_set_attention
from visattn.models.io import load_weights, save_weights
from visattn.models.pretrained import load_backbone_pretrained, load_pretrained
from visattn.registry import (
    attention_info,
    create_attention,
    create_model,
    list_attention,
    list_models,
    register_attention,
    register_model,
)

__version__ = "0.1.0"

__all__ = [
    "SpatialAttention",
    "TokenAdapter",
    "attention_from_conv",
    "attention_info",
    "create_attention",
    "create_model",
    "create_set_attention",
    "flush_denormals",
    "list_attention",
    "list_models",
    "load_backbone_pretrained",
    "load_pretrained",
    "load_weights",
    "register_attention",
    "register_model",
    "reparameterize",
    "save_weights",
    "work_limit",
]


def reparameterize(model):
    """Call ``reparameterize()`` on every sub-module that has one (inference-time merges), in place.

    Returns the model. Idempotent. A bare mechanism (``SpatialAttention``) is merged too; a
    model's own ``reparameterize`` is not called (it may call this function).
    """
    for m in model.modules():
        if (m is not model or isinstance(m, SpatialAttention)) and callable(getattr(m, "reparameterize", None)):
            m.reparameterize()
    return model
