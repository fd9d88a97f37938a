"""Reproduction harness for the paper's tables and figures (Fifty et al., NeurIPS 2021).

Dataset-agnostic: every table runs on an adapter (:mod:`tag_tf.experiments.adapter`;
the built-in default is the planted-cluster synthetic data) through cached trainings
(:mod:`tag_tf.experiments.cache`, :mod:`tag_tf.experiments.harness`). One module and one
absl script per table / figure, all sharing one training cache (``--cache_dir``)::

  python -m tag_tf.experiments.figure3   --output_dir=runs/fig3       # Figure 3
  python -m tag_tf.experiments.table1    --output_dir=runs/table1     # Table 1
  python -m tag_tf.experiments.table2    --output_dir=runs/table2     # Table 2
  python -m tag_tf.experiments.table3    --output_dir=runs/table3     # Table 3
  python -m tag_tf.experiments.train_val --output_dir=runs/train_val  # train vs validation
  python -m tag_tf.experiments.figure4   --output_dir=runs/fig4       # Figure 4

Each writes ``<name>.md``, ``<name>.json`` (every number and the settings that produced
it) and, for the figures, PNG plots. Table 3 trains all ``2^n - 1`` task groups as its
ground truth (small ``n`` only) and needs ``adapter.vary`` for its hyper-parameter variants.
"""

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)
