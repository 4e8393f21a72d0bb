"""Sparse sharing: warm-up, per-task mask search (iterative magnitude pruning), joint training, report.

    accelerate launch recipes/train_sparse.py --config recipes/configs/conll03_sparse.yaml [key.sub=value ...] [--resume | --overwrite]

Stages and the files they write are described in sparseshare/sparse/pipeline.py. The final model is
<output_dir>/joint/model (masks.safetensors inside); the report is <output_dir>/report.{json,md} and
overlap.png. An interrupted run continues with --resume.
"""
import sys

from sparseshare.cli import main

if __name__ == "__main__":
    main(["train-sparse", *sys.argv[1:]])
