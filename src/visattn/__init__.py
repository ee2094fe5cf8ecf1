"""visattn: alternatives to global self-attention for vision, verified and benchmarked.

Every mechanism maps (B, C, H, W) -> (B, C_out, H, W) and is created by name::

    import visattn
    attn = visattn.create_attention("external", 64)
    model = visattn.create_model("resnet26", num_classes=10, attention="lambda")
"""

from visattn import flops as _flops  # noqa: F401  (registers FLOP formulas)
from visattn.layers import SpatialAttention, TokenAdapter
from visattn.registry import (attention_info, create_attention, create_model, list_attention,
                              list_models, register_attention, register_model)
from visattn.models.io import load_weights, save_weights  # noqa: E402  (imports the models package)

__version__ = "0.1.0"

__all__ = [
    "SpatialAttention",
    "TokenAdapter",
    "attention_info",
    "create_attention",
    "create_model",
    "list_attention",
    "list_models",
    "load_weights",
    "register_attention",
    "register_model",
    "reparameterize",
    "save_weights",
]


def reparameterize(model):
    """Call ``reparameterize()`` on every sub-module that has one (inference-time merges), in place.

    Returns the model. Idempotent.
    """
    for m in model.modules():
        if m is not model and hasattr(m, "reparameterize") and callable(m.reparameterize):
            m.reparameterize()
    return model
