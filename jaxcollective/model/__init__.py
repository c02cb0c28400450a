"""The models: layers with a member-stack axis, the collective and the baselines, parameter counting and baseline sizing (and a PyTorch reference)."""
