"""The shortcut probe: can the model tell a replayed view of a sample from the whole sample?

Replay shows old classes only in the memory's view (a few kept tokens, or a filled grid) and new classes as
whole inputs. If the model's features tell the two views apart, it can learn "this view = an old class"
instead of the classes themselves, and on whole test images the old classes are lost. The probe measures
this after each task: for the memory's samples, the features of each as replay feeds it and of the same
sample's whole grid; a linear probe (standardised features, logistic regression) tells view from whole,
scored by cross-validated ROC AUC with both views of a sample in the same fold. 0.5: the views look the
same to the model (a coreset's whole samples give exactly that); near 1: a view is recognisable as such.

Written to stats.json as `shortcut_auc` (None without a memory, or with fewer than 4 memory rows).
"""

from __future__ import annotations

import numpy as np
import torch

from tokenforge.continual.features import pre_logit_features

MAX_ROWS = 512  # memory rows probed at most (a seeded sample of them): the probe stays a second or two
FOLDS = 5


def probe_auc(views: np.ndarray, wholes: np.ndarray, seed: int = 0) -> float | None:
    """Cross-validated ROC AUC of a linear probe telling `views` (M, D) from `wholes` (M, D), row i of each being
    the same sample (kept in one fold). None below 4 pairs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    m = len(views)
    if m < 4:
        return None
    x = np.concatenate([views, wholes]).astype(np.float64)
    y = np.repeat([1, 0], m)
    groups = np.tile(np.arange(m), 2)
    folds = StratifiedGroupKFold(
        n_splits=min(FOLDS, m), shuffle=True, random_state=seed
    )
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_predict(
        probe, x, y, groups=groups, cv=folds, method="decision_function"
    )
    return float(roc_auc_score(y, scores))


def shortcut_auc(
    model, memory, replay, keys: list[str], units: np.ndarray, seed: int = 0
) -> float | None:
    """The probe's AUC for `memory`'s rows: replayed views (`replay.views`) against the whole grids of the same
    samples, found by key in `keys`/`units` (N, h, w[, F]). `model` in eval mode."""
    index = {k: i for i, k in enumerate(keys)}
    rows = np.array(
        [r for r, k in enumerate(memory.keys) if k in index], dtype=np.int64
    )
    if len(rows) < 4:
        return None
    if len(rows) > MAX_ROWS:
        rows = np.sort(
            np.random.default_rng(seed).choice(rows, MAX_ROWS, replace=False)
        )
    memory = memory.rows(rows)
    view_units, view_positions = replay.views(memory)
    wholes = torch.from_numpy(units[[index[k] for k in memory.keys]])
    return probe_auc(
        pre_logit_features(model, view_units, view_positions),
        pre_logit_features(model, wholes),
        seed,
    )
