"""Sparse sharing: warm-up, per-task mask search, joint training through the masks, report.

    accelerate launch recipes/train_sparse.py --config recipes/configs/conll03_sparse.yaml [key.sub=value ...] [--resume | --overwrite]

The recipe itself, read top to bottom, is sparseshare/recipes/train_sparse.py (stages and the files they
write are described there; `sparseshare train-sparse` runs the same code). The final model is
<output_dir>/joint/model (masks.safetensors inside); the report is <output_dir>/report.{json,md} and
overlap.png. An interrupted run continues with --resume.
"""
import sys

from sparseshare.cli import main

if __name__ == "__main__":
    main(["train-sparse", *sys.argv[1:]])
