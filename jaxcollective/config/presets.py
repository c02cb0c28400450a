"""The original's named configs (`--config phase1`, `--config debug`): pure data."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The original's CONFIG_PHASE1: 2 experts, 6 analysts, 2,969,887 parameters.
    "phase1": dict(
        dataset="fashion_mnist",
        n_total=8,
        expert_ratio=0.2,
        expert_hidden=(512, 256),
        expert_output=128,
        analyst_hidden=(256, 128),
        analyst_output=64,
        c_expert=0.25,
        c_collective=1.0,
        collective_version="simple_mlp",
        collective_hidden_scale=1.0,
        batch_size=128,
        gradient_accumulation_steps=4,
        eval_batch_size=1024,
        learning_rate=1e-3,
        epochs=100,
        optimizer="adam",
        weight_decay=1e-4,
        use_augmentation=True,
        use_mixed_precision=False,
        topk=(1,),
        val_split=0.1,
        seed=42,
    ),
    # The original's CONFIG_DEBUG: the same rules at small widths, 567,044 parameters.
    "debug": dict(
        dataset="fashion_mnist",
        n_total=8,
        expert_ratio=0.2,
        expert_hidden=(128, 64),
        expert_output=32,
        analyst_hidden=(64, 32),
        analyst_output=16,
        c_expert=0.25,
        c_collective=1.0,
        collective_version="simple_mlp",
        collective_hidden_scale=1.0,
        batch_size=128,
        gradient_accumulation_steps=4,
        eval_batch_size=512,
        learning_rate=1e-3,
        epochs=5,
        optimizer="adam",
        weight_decay=0.0,
        use_augmentation=True,
        use_mixed_precision=True,
        topk=(1,),
        val_split=0.1,
        seed=42,
    ),
}
