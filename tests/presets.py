"""The debug preset's architecture with the training keys these tests were written for.

Since the presets carry the original's whole CONFIG_DEBUG (4 accumulation steps,
augmentation, bf16, seed 42), tests that pin numbers or compare programs take its
architecture only and set their training keys here or themselves.
"""

from jaxcollective.config import Config

DEBUG_TRAINING = {
    "gradient_accumulation_steps": 1,
    "use_augmentation": False,
    "use_mixed_precision": False,
    "seed": 0,
    "eval_batch_size": 1000,
    "weight_decay": 0.0,
    "epochs": 20,
}


def debug_config(values: dict) -> Config:
    return Config.from_dict({**DEBUG_TRAINING, **values}, preset="debug")
