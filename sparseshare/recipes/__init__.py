"""The recipes: the training procedures, each read top to bottom in one file (as torchtune's recipes), assembled
from the library's components. ``recipes/train.py`` and ``recipes/train_sparse.py`` at the top of the
repository launch them (``accelerate launch recipes/train.py --config ...``); ``sparseshare train`` and
``sparseshare train-sparse`` run the same code. The library never imports a recipe."""
