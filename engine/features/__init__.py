"""Feature parts: SAEs, transcoders and directions — import/export (SAELens, sparsify), attach,
read, steer, train and bake into weights.

Public API: ``read_coder``, ``export_saelens``, ``SparseCoder``, ``splice``, ``FeatureEdit``,
``save_coder``/``load_coder``, ``save_direction``/``load_direction``, ``direction_edit``,
``read_feature``, ``top_features``, ``train_sae``, ``bake``, ``fold_feature_scale``/``fold_part``
(feature scales folded into a new coder part's decoder rows). Modules import torch; import them
lazily from the CLI and the TUI.
"""

from __future__ import annotations
