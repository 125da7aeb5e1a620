"""Per-modality encoders, fusion modules and the multimodal network that joins them."""
from trainables.models.multimodal import MultimodalNet, build_model

__all__ = ["MultimodalNet", "build_model"]
