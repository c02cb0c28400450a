"""The allowed values of the config's choice keys (model_type, collective_version,
optimizer, dtype, device, resume)."""

from __future__ import annotations

MODEL_TYPES = (
    "collective",
    "shallow",
    "balanced",
    "deep",
    "very_deep",
    "deep_resnet",
    "very_deep_resnet",
)
BASELINE_TYPES = MODEL_TYPES[1:]
COLLECTIVE_VERSIONS = ("simple_mlp", "encoder_head")
OPTIMIZERS = ("adam", "adamw", "sgd")
DTYPES = ("float32", "bfloat16")
DEVICES = ("auto", "cuda", "gpu", "cpu")
RESUME = ("auto", "never")
