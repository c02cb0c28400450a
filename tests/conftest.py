import os
import tempfile

# Keep the persistent XLA cache of test runs out of the user's home.
os.environ.setdefault("JAXCOLLECTIVE_CACHE_DIR", tempfile.mkdtemp(prefix="jaxcollective-xla-"))
os.environ.setdefault("WANDB_MODE", "disabled")
