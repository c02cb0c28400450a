"""The metric names of docs/design.md ("Metrics"), written out once for the tests (not imported from the
package, so a renamed metric fails the tests)."""

EPOCH_KEYS = {
    "epoch",
    "train/loss",
    "train/loss_prediction",
    "train/loss_diversity_expert",
    "train/loss_diversity_analyst",
    "train/accuracy",
    "val/loss",
    "val/accuracy",
    "test/loss",
    "test/accuracy",
    "lr",
    "model_params",
    "param_efficiency/accuracy_per_log10_params",
    "param_efficiency/test_accuracy_per_log10_params",
    "param_efficiency/loss_per_log10_params",
    "param_efficiency/test_loss_per_log10_params",
    "time/epoch_s",
}
FINAL_KEYS = {
    "final/test_accuracy",
    "final/test_loss",
    "final/best_val_accuracy",
    "final/model_params",
    "final/param_efficiency",
    "final/accuracy_per_million_params",
    "final/accuracy_per_log10_params",
}
