"""Non-contrastive Siamese baselines: SimSiam and BYOL, behind the ``Method`` interface.

Both take exactly two views x1, x2 of each image and predict one view's projection from the other's; no
negatives. cos(a, b) = a . b / (||a|| ||b||), sg = stop-gradient. Cosines are computed in float32 (float64
for float64 input) with autocast disabled.

SimSiam (Chen & He, CVPR 2021, "Exploring Simple Siamese Representation Learning", arXiv 2011.10566, Eq. 1-2).
Encoder f, projector g, predictor h; z = g(f(x)), p = h(z); D(p, z) = -cos(p, sg(z)):

  L = D(p1, z2) / 2 + D(p2, z1) / 2                       (mean over the batch)

This equals lightly's ``0.5 * (NegativeCosineSimilarity()(p1, z2) + NegativeCosineSimilarity()(p2, z1))``
with detached z (its SimSiam example) and ``cecl.losses.negative_cosine``.

BYOL (Grill et al., NeurIPS 2020, "Bootstrap Your Own Latent", arXiv 2006.07733, Eq. 2 and the symmetrised
total loss). Online encoder f, projector g, predictor q; target encoder f', projector g' are momentum
copies (``cecl.methods.momentum``), z' = g'(f'(x)) without gradient:

  loss_i = [2 - 2 cos(q(g(f(x1_i))), z'2_i)] + [2 - 2 cos(q(g(f(x2_i))), z'1_i)],   L = mean_i loss_i

The two directions are SUMMED, as in the paper (L + L~, so L is in [0, 8]): the paper's learning rates
are for this scale. So L = 4 + 4 * lightly's ``0.5 * (criterion(p1, z'2) + criterion(p2, z'1))`` with
``criterion = NegativeCosineSimilarity()`` (its BYOL example), and our gradients are 4x lightly's (with
Adam, the pipeline's default optimiser, the factor is immaterial). After every optimiser step
(``after_step``) theta' <- m theta' + (1 - m) theta with a CONSTANT m (``momentum``, default 0.99). The
paper increases m from 0.996 to 1 with a cosine schedule over training; that is not implemented, because
``after_step`` does not know the step count or the run length.

Heads (``cecl.models.mlp_head``, un-normalised: the losses normalise). The papers' projectors are 2-3 layer
MLPs with BatchNorm and 2048-4096 hidden units on a 2048-d ResNet-50 feature; here the encoders give 64-128
features, so the heads are two-layer (SimSiam's CIFAR projector also has two layers) and narrow:

- SimSiam: projector Linear(F, d)-BN-ReLU-Linear(d, d)-BN(affine=False), predictor Linear(d, d_h)-BN-ReLU-
  Linear(d_h, d) with the paper's bottleneck ratio d_h = d / 4 (2048 -> 512 -> 2048); d = ``proj_dim``
  (default 128), d_h = ``pred_hidden`` (default 32).
- BYOL: projector Linear(F, h)-BN-ReLU-Linear(h, d), predictor Linear(d, h_q)-BN-ReLU-Linear(h_q, d), with
  d = ``proj_dim`` 128 and h = ``proj_hidden`` = h_q = ``pred_hidden`` = 512 (lightly's example ratio
  hidden = 4 d; the paper's is 4096 / 256).

BatchNorm in the hidden layers is kept by default because both methods depend on it (SimSiam's BN ablation;
BYOL without any normalisation collapses). ``batch_norm=False`` drops every BN layer: BN statistics are per
process, so the loss is exact across process counts only with ``nn.SyncBatchNorm`` (CUDA; the training loop
converts there) or without BN, which is how the two-process test checks exactness. Each view goes through
the networks in its own forward pass, so BN normalises each view's batch separately, as in the papers'
code.

Global batch under torchrun: the per-sample losses are gathered with ``gather_with_grad`` and averaged, so
every process returns the loss of the global batch and DDP's averaged gradients equal one process's on the
concatenated batch, also for uneven shards (see ``cecl.distributed``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cecl.distributed import gather_with_grad
from cecl.losses._common import autocast_disabled, check_bool, check_count, compute_dtype
from cecl.methods.base import Method
from cecl.methods.momentum import check_momentum, momentum_copy, momentum_update
from cecl.methods.registry import MethodContext, register_method
from cecl.models import Encoder, mlp_head
from cecl.schema import Strict


def two_views(method: Method, views: Tensor) -> tuple[Tensor, Tensor]:
    """The two views [B, C, H, W] of ``views`` [B, 2, C, H, W]; any other shape is a ValueError."""
    if not isinstance(views, Tensor) or views.dim() != 5 or views.shape[1] != 2:
        shape = tuple(views.shape) if isinstance(views, Tensor) else type(views).__name__
        raise ValueError(f"{type(method).__name__} needs exactly 2 views [B, 2, C, H, W], got {shape}")
    return views[:, 0], views[:, 1]


def cosine(p: Tensor, z: Tensor) -> Tensor:
    """Row-wise cosine similarity [B] of ``p`` and ``z`` [B, D], in float32 (float64 for float64 input)."""
    with autocast_disabled(p.device.type):
        dtype = torch.float64 if torch.float64 in (p.dtype, z.dtype) else compute_dtype(p.dtype)
        return torch.linalg.vecdot(F.normalize(p.to(dtype), dim=1), F.normalize(z.to(dtype), dim=1))


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """SimSiam's per-sample loss [B]: -cos(p1, sg(z2)) / 2 - cos(p2, sg(z1)) / 2."""
    return -0.5 * (cosine(p1, z2.detach()) + cosine(p2, z1.detach()))


def byol_loss(p1: Tensor, p2: Tensor, target1: Tensor, target2: Tensor) -> Tensor:
    """BYOL's per-sample loss [B]: [2 - 2 cos(p1, sg(z'2))] + [2 - 2 cos(p2, sg(z'1))] (summed directions)."""
    return (2.0 - 2.0 * cosine(p1, target2.detach())) + (2.0 - 2.0 * cosine(p2, target1.detach()))


class PredictorMethod(Method):
    """Encoder -> projector -> predictor with un-normalised MLP heads (``mlp_head``), two views.

    The shared body of SimSiam, BYOL and NNCLR: head widths and BatchNorm validated once, here.
    ``output_norm`` adds the affine-free BatchNorm on the projector output (SimSiam, NNCLR).
    """

    n_views = 2

    def __init__(
        self,
        encoder: Encoder,
        *,
        proj_dim: int,
        proj_hidden: int,
        pred_hidden: int,
        batch_norm: bool,
        output_norm: bool,
    ) -> None:
        super().__init__(encoder)
        self.proj_dim = check_count("proj_dim", proj_dim)
        self.proj_hidden = check_count("proj_hidden", proj_hidden)
        self.pred_hidden = check_count("pred_hidden", pred_hidden)
        self.batch_norm = check_bool("batch_norm", batch_norm)
        norm = {"batch_norm": batch_norm}
        self.projector = mlp_head(encoder.feature_dim, proj_hidden, proj_dim, **norm, output_norm=output_norm)
        self.predictor = mlp_head(proj_dim, pred_hidden, proj_dim, **norm)

    def extra_repr(self) -> str:
        return (
            f"proj_dim={self.proj_dim}, proj_hidden={self.proj_hidden}, pred_hidden={self.pred_hidden}, "
            f"batch_norm={self.batch_norm}"
        )


class SimSiam(PredictorMethod):
    """SimSiam: encoder -> projector -> predictor, symmetric negative cosine against stop-gradient targets.

    Options: ``proj_dim`` (int, 128): projector width and output; ``pred_hidden`` (int, 32): predictor
    bottleneck; ``batch_norm`` (bool, True): BatchNorm1d in the heads (module docstring).
    """

    def __init__(
        self, encoder: Encoder, *, proj_dim: int = 128, pred_hidden: int = 32, batch_norm: bool = True
    ) -> None:
        # SimSiam's projector keeps its width: hidden = output = proj_dim.
        kw = {"proj_hidden": proj_dim, "pred_hidden": pred_hidden, "batch_norm": batch_norm}
        super().__init__(encoder, proj_dim=proj_dim, **kw, output_norm=True)

    def embed(self, views: Tensor, labels: Tensor | None = None) -> tuple[Tensor, ...]:
        """(p1, p2, z1, z2), each [b, D]: predictions and projections of each view (one call per view)."""
        x1, x2 = two_views(self, views)
        z1, z2 = self.projector(self.encoder(x1)), self.projector(self.encoder(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return p1, p2, z1, z2

    def loss_from(self, embeddings: tuple[Tensor, ...], labels: Tensor | None = None) -> Tensor:
        """Mean SimSiam loss over the global batch."""
        p1, p2, z1, z2 = embeddings
        with autocast_disabled(p1.device.type):
            return gather_with_grad(simsiam_loss(p1, p2, z1, z2)).mean()


class BYOL(PredictorMethod):
    """BYOL: online encoder/projector/predictor regress the momentum target's projection of the other view.

    Options: ``momentum`` (float in [0, 1], 0.99): EMA coefficient of the target networks, constant;
    ``proj_dim`` (int, 128), ``proj_hidden`` (int, 512), ``pred_hidden`` (int, 512): head widths;
    ``batch_norm`` (bool, True): BatchNorm1d in the heads (module docstring).
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        momentum: float = 0.99,
        proj_dim: int = 128,
        proj_hidden: int = 512,
        pred_hidden: int = 512,
        batch_norm: bool = True,
    ) -> None:
        momentum_value = check_momentum(momentum)
        kw = {"proj_hidden": proj_hidden, "pred_hidden": pred_hidden, "batch_norm": batch_norm}
        super().__init__(encoder, proj_dim=proj_dim, **kw, output_norm=False)
        self.momentum = momentum_value
        self.target_encoder = momentum_copy(encoder)
        self.target_projector = momentum_copy(self.projector)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}, {super().extra_repr()}"

    def embed(self, views: Tensor, labels: Tensor | None = None) -> tuple[Tensor, ...]:
        """(p1, p2, z'1, z'2), each [b, D]: online predictions, target projections without gradient."""
        x1, x2 = two_views(self, views)
        p1 = self.predictor(self.projector(self.encoder(x1)))
        p2 = self.predictor(self.projector(self.encoder(x2)))
        with torch.no_grad():
            target1 = self.target_projector(self.target_encoder(x1))
            target2 = self.target_projector(self.target_encoder(x2))
        return p1, p2, target1, target2

    def loss_from(self, embeddings: tuple[Tensor, ...], labels: Tensor | None = None) -> Tensor:
        """Mean BYOL loss over the global batch."""
        p1, p2, target1, target2 = embeddings
        with autocast_disabled(p1.device.type):
            return gather_with_grad(byol_loss(p1, p2, target1, target2)).mean()

    def after_step(self) -> None:
        """theta' <- m theta' + (1 - m) theta for the target encoder and projector."""
        momentum_update(self.encoder, self.target_encoder, self.momentum)
        momentum_update(self.projector, self.target_projector, self.momentum)


def predictor_method(cls: type[PredictorMethod]):
    """Encoder + projector + predictor (SimSiam, BYOL, NNCLR); the method builds its heads. Two views."""

    def build(ctx: MethodContext, options: Strict) -> Method:
        if ctx.views != 2:
            raise ValueError(f"pretrain.views must be 2 for {cls.__name__} (got {ctx.views})")
        return cls(ctx.make_encoder(), proj_dim=ctx.proj_dim, **options.model_dump())

    return build


register_method("simsiam")(predictor_method(SimSiam))
register_method("byol")(predictor_method(BYOL))
