"""Entry point: `python run.py --model_type=shallow [--key=value ...]`, and the program
that `wandb agent` launches. Parsing and training live in the package."""

import sys

from jaxcollective.main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
