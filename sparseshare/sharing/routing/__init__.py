"""Routing networks (Rosenbaum, Klinger & Riemer, "Routing Networks: Adaptive Selection of Non-linear Functions for
Multi-Task Learning", ICLR 2018): every routed encoder layer offers k function blocks, and a router picks one block
per layer for each sentence.

Blocks. Layer l has ``model.routing.blocks`` (an int for every layer, or a list with one entry per layer) copies of
the encoder's layer l, all starting from the same initialisation, plus with ``model.routing.pass_block: true`` a PASS block
(the identity) at every layer whose input and output widths agree (every scratch layer; BiLSTM layers above the
first, whose input is the embeddings). Choice j < k is copy j, choice k is PASS. The word/char embeddings (for the
scratch Transformer also its input projection, positions and final LayerNorm) are shared, computed once per batch.
A batch's sentences are grouped by their chosen block (``index_select`` -> the block on that sub-batch with its own
mask -> ``index_copy``; a loop over blocks, never over sentences), so a block gets gradients only from the sentences
routed through it, and an unchosen block is not run at all: per-step cost stays that of one encoder whatever k is.
k = 1 without PASS is hard sharing. A Hugging Face Transformer keeps its own forward pass: each entry of its layer
list becomes a :class:`~sparseshare.sharing.hf_layers.RoutedLayer` that holds the blocks and asks the router for its rows' choices
(all rows of a sentence follow the sentence's route); PASS is offered at every layer.

Routers (``model.routing.router``):

* ``wpl`` (the paper's multi-agent setting): one tabular agent per task. Its policy ``policy[task, layer]`` is a
  distribution over the layer's choices that does not look at the input. Each agent keeps action values
  ``q[task, layer, choice]`` (the running mean of the returns that followed the choice, rate ``VALUE_RATE``; the
  first observation sets it) and takes the Weighted Policy Learner step of Abdallah & Lesser (2008) after every
  training batch of its task: with the gradient ``delta(a) = q(a) - sum_b pi(b) q(b)``, ``pi(a) += lr x delta(a) x
  (1 - pi(a))`` where delta > 0 and ``pi(a) += lr x delta(a) x pi(a)`` where delta <= 0, then the policy is
  projected back onto the simplex (clipped to [0, 1], renormalised). See :func:`wpl_update`.
* ``reinforce``: a single agent for all tasks, one small MLP per layer (the layers' inputs differ in width and
  choice count) over [the layer input mean-pooled over the sentence's words and standardised, the task one-hot],
  softmax over the layer's choices, trained with REINFORCE against a running-mean baseline per task and layer
  (rate ``VALUE_RATE``, set by the first batch). Its last layer starts at zero: the initial policy is uniform.
* ``dispatched`` (the paper's dispatched routing): ``model.routing.agents`` tabular WPL agents (0: one per task),
  not tied to tasks, and a dispatcher, an MLP over [the first layer's pooled input, the task one-hot], that
  assigns each sentence to one agent; that agent's policy then routes the sentence through every layer. The
  agents take the WPL step on the returns of the sentences dispatched to them; the dispatcher is trained with
  REINFORCE on the sentence's whole return (the return of the first decision) against a running-mean baseline
  per task. Tasks may thus share an agent (and its routes) or not, as the dispatcher learns.
* ``gumbel`` and ``gumbel_mix`` (differentiable, BiLSTM and scratch encoders): per-task route logits, a parameter
  trained by the model's optimiser; a sentence's block is a categorical draw from their softmax. ``gumbel`` scales
  the chosen block's output by ``p_c / sg(p_c)``; ``gumbel_mix`` runs every block in training and takes
  ``sum_j (onehot_j + p_j - sg(p_j)) y_j`` (:func:`~sparseshare.sharing.routing.network.mix`), so the logits'
  gradient compares the blocks' outputs (the straight-through Gumbel-softmax estimator).

``model.routing.lr`` is the step size of the routers that learn from rewards (the WPL policy step, the REINFORCE
SGD learning rate). Their state is kept in buffers, not parameters: the training optimiser never sees it, the
router takes its own steps in :meth:`observe_losses`.

Rewards. The final reward of a sentence is its negative per-token training loss, ``-loss / words`` (the
per-sentence loss ``model(batch, task)`` returns, which the training loop hands over through
:meth:`observe_losses`). Why not the paper's +1/-1 for a correct prediction: a tagger's prediction is a sequence,
"correct" would need a token-accuracy threshold (a new hyperparameter, and with an untrained model nearly every
sentence fails it, so the signal is flat at -1 early on), and it would need a decode (Viterbi for the CRF) of every
training batch; the loss is already computed, dense and graded, and the paper itself uses the negative loss for
objectives other than classification. Dividing by the sentence length keeps long sentences from looking like bad
routes. Every routing decision also gets the paper's immediate collaboration reward ``rho x`` the historical
probability of the chosen block at that layer (``model.routing.rho``; the share of all training sentences of all
tasks routed through that block so far, uniform before the first step), which rewards reuse. With
``model.routing.history: N`` the share counts the last N training batches only, like the official code's window of
recent decisions: a block that falls out of use stops being rewarded for its past. The return of the
decision at layer l is the undiscounted sum of the rewards from l on: the final reward plus the collaboration
rewards of layers l..L (:func:`returns_to_go`).

Randomness and resume. Routes are sampled in training mode only; in evaluation mode (``model.eval()``) the policy
is greedy (argmax; WPL: the same route for every sentence of a task; dispatched: the dispatcher's argmax agent,
then that agent's argmax route), except during a per-task warm-up (``model.routing.warmup_steps``), whose set routes
evaluation follows too: the router has not learnt yet. Sampling uses a private generator: its state
is the persistent buffer ``rng_state``, seeded by :meth:`initialize` (``train.seed``), advanced by exactly one draw
per training forward pass (the seed of that pass's uniforms, plus the process rank), never the global RNG. Policies,
values, baselines, MLP weights, usage counts and the routing-map history are persistent buffers too, so they are
saved in ``model.safetensors`` and in every checkpoint, and a resumed run routes like an uninterrupted one.
Distributed runs: every process routes and scores its own slice of the global batch, and the router statistics
(return sums and counts per choice, the REINFORCE gradient) are summed over processes with
``torch.distributed.all_reduce`` before the update, so every process takes the same router step and the routers
never diverge.

Routing map. The share of each task's training sentences routed through each block of each layer is counted over
the epoch; :meth:`log_values` (called at every epoch end) closes the epoch: the epoch's map is appended to the
``map_history`` buffer and the mean normalised entropy of the routes is logged as ``routing/entropy``.
:meth:`save_files` writes ``routing.json`` into the model folder (per-epoch maps, the historical usage per layer,
the WPL policies and greedy routes); :func:`draw_routing_map` draws it into a PNG (``sparseshare routing show MODEL
--png out.png``).

The package: :mod:`.network` (the strategy: blocks, grouping sentences by block, the hooks of the training loop),
:mod:`.routers` (WPL, REINFORCE, dispatched behind one interface), :mod:`.rl` (the learning rules as functions) and
:mod:`.maps` (``routing.json``, printed and drawn).

Parameter names: ``encoder.*`` (shared embeddings), ``blocks.<layer>.<j>.*`` (block j of a layer, 0-based). Hugging
Face Transformer: ``encoder.model.<layer list>.<layer>.blocks.<j>.*``.
"""
from .maps import (ROUTING_FILE, draw_routing_map, final_map, format_routing_map, load_routing_map,
                   task_block_information)
from .network import RoutingNetwork, dispatch, routing_blocks_per_layer
from .routers import ROUTERS, Router
from .rl import RouterMLP, returns_to_go, router_sgd_step, sample_choices, wpl_update

__all__ = ["ROUTERS", "ROUTING_FILE", "Router", "RouterMLP", "RoutingNetwork", "dispatch", "draw_routing_map",
           "final_map", "format_routing_map", "load_routing_map", "returns_to_go", "router_sgd_step",
           "routing_blocks_per_layer", "sample_choices", "task_block_information", "wpl_update"]
