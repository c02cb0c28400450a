"""The config keys of training (optimizer, schedule, batches, epochs, seeds, dtype,
metrics), each declared with its role (`_key`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .roles import P, Role, V, _key


@dataclass(frozen=True)
class TrainingKeys:
    """The training keys (the fields of `Config` after the model's)."""

    # --- training
    optimizer: str = _key(
        "adam",
        "adam (L2 in the gradient), adamw or sgd (momentum 0.9)",
        "training",
        P,
        "the update rule",
    )
    learning_rate: float = _key(
        1e-3,
        "learning rate (constant unless lr_plateau_patience > 0)",
        "training",
        V,
        "lives in the optimizer state",
    )
    lr_plateau_patience: int = _key(
        0,
        "multiply the learning rate by lr_plateau_factor after this many epochs in a row "
        "without a new best validation accuracy (0: constant, as the original)",
        "training",
        V,
        "sets the learning rate in the optimizer state from the validation history",
        setting=True,
    )
    lr_plateau_factor: float = _key(
        0.1,
        "the factor of each plateau reduction, in (0, 1)",
        "training",
        V,
        "sets the learning rate in the optimizer state from the validation history",
        setting=True,
    )
    weight_decay: float = _key(
        0.0,
        "adam: L2 coefficient; adamw: decoupled decay; sgd: L2",
        "training",
        V,
        "lives in the optimizer state; 0 compiles without the decay pass",
        program_part=lambda v: v > 0,
    )
    batch_size: int = _key(
        128, "global batch size (split across devices)", "training", P, "the batch's shape"
    )
    eval_batch_size: int = _key(
        1000,
        "validation/test batch size (padded and masked: the metrics do not depend on it)",
        "training",
        P,
        "the evaluation batches' shape; masked, so no metric changes",
        trajectory=False,
    )
    val_split: float = _key(
        0.1,
        "fraction of the training split held out for validation, in (0, 1)",
        "training",
        V,
        "the split's index arrays, whose lengths are shapes",
        program_part=lambda v: v,
    )
    gradient_accumulation_steps: int = _key(
        1,
        "micro-batches of batch_size per update",
        "training",
        P,
        "the update's inner loop",
        setting=True,
    )
    epochs: int = _key(
        20,
        "training epochs (with early stopping: at most)",
        "training",
        Role.LENGTH,
        "a run with more epochs extends one with fewer",
        setting=True,
    )
    early_stopping_patience: int = _key(
        0,
        "stop once this many epochs in a row brought no new best validation accuracy (mean "
        "over the replicas; 0: train all epochs)",
        "training",
        Role.LENGTH,
        "decides where the run ends, from its validation history; the epochs before are the same",
        setting=True,
    )
    use_augmentation: bool = _key(
        False,
        "on-device augmentation (docs/design.md, Data)",
        "training",
        P,
        "adds the augmentation",
        setting=True,
    )
    seed: int = _key(
        0, "one seed: split, init, shuffling, dropout, augmentation", "training", V, "the RNG keys"
    )
    num_seeds: int = _key(
        1,
        "replicas trained together with seeds seed, seed+1, ...",
        "training",
        P,
        "the replica axis",
    )
    dtype: str = _key(
        "float32",
        "compute dtype: float32 or bfloat16 (parameters stay float32)",
        "training",
        P,
        "the compute dtype",
        setting=True,
    )
    use_mixed_precision: Optional[bool] = _key(
        None,
        "the original's key: true = dtype bfloat16 (float32 parameters; bf16 has float32's "
        "exponent range, so no loss scaling is needed), false = float32; a value given wins "
        "over a preset's; contradicting an explicit dtype is an error",
        "training",
        P,
        "sets dtype",
    )
    topk: tuple = _key(
        (1,),
        "accuracies to log, e.g. (1, 5): top-k for each k > 1 as "
        "*/accuracy_topK (top-1 stays */accuracy)",
        "training",
        P,
        "adds metrics to the step",
    )
