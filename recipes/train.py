"""Train a (multi-task) tagger.

    accelerate launch recipes/train.py --config recipes/configs/conll03_hard.yaml [key.sub=value ...] [--resume | --overwrite]

The recipe itself, read top to bottom, is sparseshare/recipes/train.py (it ships with the package, so
`sparseshare train` runs the same code from a non-editable install). It reads the config, trains with
Accelerate (dev-based selection and early stopping), saves the selected model to <output_dir>/model and
the dev/test scores to <output_dir>/results.json.
"""
import sys

from sparseshare.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
