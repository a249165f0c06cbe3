"""Contrastive losses on multi-view features [B, V, D] (B source images, V >= 2 views each).

- ``CECLLoss``: Context-Enriched Contrastive Loss (ConTeX, Deng & Yang, IEEE TMM 2025):
  L = (tau / tau_base) * mean_i [ w * L_a(i) + (1 - w) * L_b(i) ], a label part L_a whose denominator
  holds only different-label samples and a self part L_b (SimCLR's NT-Xent); variants "official" and
  "hinge". Exact definition in ``cecl.losses.cecl``.
- ``SupConLoss``: SupCon's L_out (contrast mode "all"); ``labels=None`` gives SimCLR's NT-Xent.
- ``build(name, **options)`` / ``available()``: the registry ("cecl", "supcon", "simclr"; the "simclr"
  loss ignores labels); ``register(name)`` adds more.

All losses L2-normalise the features themselves, flatten the views view-major (N = V*B anchors, all
first views then all second views), compute logits in float32 (float64 for float64 input) even under
autocast, and never materialise the N x N similarity matrix at once.
"""

from cecl.losses.cecl import CECLLoss
from cecl.losses.registry import available, build, register
from cecl.losses.supcon import SimCLRLoss, SupConLoss

__all__ = ["CECLLoss", "SimCLRLoss", "SupConLoss", "available", "build", "register"]
