"""The config keys of the runtime (device, data folders, results, logging,
checkpoints) and the original's keys kept for compatibility, each declared with its
role (`_key`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .roles import Role, _key


@dataclass(frozen=True)
class RuntimeKeys:
    """The runtime and compatibility keys (the last fields of `Config`)."""

    # --- runtime
    device: str = _key(
        "auto",
        "auto, cuda (alias gpu) or cpu; a missing GPU is a warning",
        "runtime",
        Role.DEVICE,
        "where, not what",
    )
    data_dir: Optional[str] = _key(
        None,
        "folder with the raw dataset files (itself, DIR/<dataset>, torchvision's "
        "DIR/MNIST/raw, DIR/downloads/manual) or a prepared TFDS data dir; then "
        "$JAXCOLLECTIVE_DATA_DIR, $TFDS_DATA_DIR, ~/tensorflow_datasets, "
        "/usr/share/datasets are searched",
        "runtime",
        Role.DATA,
        "the files are checked by content",
    )
    manual_dir: Optional[str] = _key(
        None,
        "another folder searched like data_dir (TFDS's name)",
        "runtime",
        Role.DATA,
        "the files are checked by content",
    )
    results: str = _key(
        "runs/results.jsonl",
        "results file: one JSON line per finished run",
        "runtime",
        Role.OUTPUT,
        "where the record goes",
    )
    wandb_project: str = _key("jaxcollective", "wandb project", "runtime", Role.OUTPUT, "logging")
    wandb_name: Optional[str] = _key(
        None, "wandb run name (default: type-size-dataset-seed)", "runtime", Role.OUTPUT, "logging"
    )
    wandb_entity: Optional[str] = _key(None, "wandb entity", "runtime", Role.OUTPUT, "logging")
    progress: bool = _key(
        True, "progress bar over epochs on stderr", "runtime", Role.OUTPUT, "display"
    )
    checkpoint_dir: str = _key(
        "runs/checkpoints",
        "checkpoints, a folder per run named by its config's fingerprint",
        "runtime",
        Role.OUTPUT,
        "checkpoints",
    )
    checkpoint_every: int = _key(
        0,
        "save every K epochs; 0: after any epoch ending 60 s or more "
        "after the last save (and always when the run stops)",
        "runtime",
        Role.OUTPUT,
        "checkpoints",
    )
    resume: str = _key(
        "auto",
        "auto: continue from a checkpoint of the same config; never: start over (and replace it)",
        "runtime",
        Role.OUTPUT,
        "checkpoints",
    )
    keep_checkpoint: bool = _key(
        False,
        "keep the final state when the run finishes (else its checkpoint folder is removed)",
        "runtime",
        Role.OUTPUT,
        "checkpoints",
    )
    # Accepted for the original's sweeps; checked against the dataset or ignored.
    input_dim: Optional[int] = _key(
        None, "must match the dataset if given", "compat", Role.CHECK, "checked against the dataset"
    )
    num_classes: Optional[int] = _key(
        None, "must match the dataset if given", "compat", Role.CHECK, "checked against the dataset"
    )
    num_workers: Optional[int] = _key(
        None,
        "no effect: the data pipeline runs on the device",
        "compat",
        Role.NO_EFFECT,
        "on-device-data",
    )
    use_gpu: Optional[bool] = _key(
        None,
        "the original's key: false runs on the CPU (as --device=cpu)",
        "compat",
        Role.DEVICE,
        "sets device",
    )
    use_torch_compile: Optional[bool] = _key(
        None, "no effect: every step is compiled (jit)", "compat", Role.NO_EFFECT, "always-compiled"
    )
    log_interval: Optional[int] = _key(
        None,
        "no effect: metrics are logged once per epoch",
        "compat",
        Role.NO_EFFECT,
        "per-epoch-logging",
    )
    training_strategy: Optional[str] = _key(
        None, "no effect: one training strategy here", "compat", Role.NO_EFFECT, "single-strategy"
    )
