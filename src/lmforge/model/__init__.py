"""The OLMo 2 model: config and presets, the module, sizes/FLOPs, loss, sampling, HF conversion."""

from lmforge.model.config import PRESETS, ModelConfig
from lmforge.model.generate import generate
from lmforge.model.hf import from_hf, to_hf
from lmforge.model.io import load_model, save_model
from lmforge.model.loss import lm_loss
from lmforge.model.size import flops_per_token, model_size
from lmforge.model.transformer import Transformer

__all__ = [
    "PRESETS",
    "ModelConfig",
    "Transformer",
    "generate",
    "from_hf",
    "to_hf",
    "load_model",
    "save_model",
    "lm_loss",
    "flops_per_token",
    "model_size",
]
