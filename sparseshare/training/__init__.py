"""The components a training recipe assembles (the recipes themselves are in :mod:`sparseshare.recipes`):

- :mod:`.data`: each task's corpora, the model built from a config, the input files a config names;
- :mod:`.checkpoints`: the run's state, atomic checkpoints and model saves, resume checks;
- :mod:`.progress`: the progress bar and the experiment tracker;
- :mod:`.plugins`: what hooks into the training loop (checkpoints, early stopping, tracker, divergence check, the
  sharing strategy's step hooks, and a caller's own).

Optimisers and schedules are in :mod:`sparseshare.optim`, scoring in :mod:`sparseshare.evaluation`.
"""
