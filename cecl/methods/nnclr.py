"""NNCLR (Dwibedi et al., ICCV 2021, "With a Little Help from My Friends: Nearest-Neighbor Contrastive
Learning of Visual Representations", arXiv 2104.14548), behind the ``Method`` interface.

Two views per image; encoder f, projector g, predictor h: z = g(f(x)), p = h(z). A support set Q (a FIFO of
the K = ``queue_size`` most recent L2-normalised projections of EARLIER steps, gathered from all processes)
replaces each projection by its nearest neighbour, without gradient:

  NN(z, Q) = argmax_{q in Q} cos(z, q)
  L = 0.5 * [ NTXent(NN(z1, Q), p2) + NTXent(NN(z2, Q), p1) ]

NTXent(a, b) is SimCLR's loss (``SimCLRLoss`` with base_temperature = temperature, default tau = 0.1) on the
pairs (a_i, b_i): 2B anchors, each with its partner as positive and the other 2B - 2 vectors as negatives,
all L2-normalised. Gradients reach the networks only through p. This is the loss of lightly's NNCLR example
(``NNMemoryBankModule`` + ``NTXentLoss``), which ``tests/test_siamese.py`` checks values and gradients
against. The paper's pseudocode (Algorithm 1) instead uses a one-directional cross-entropy,
logits = NN(z1) p2^T / tau, whose negatives are only the other images' predictions of the other view.

Support set, compared with lightly's ``NNMemoryBankModule`` (1.6.0):

- Same: initialised with random unit vectors; both views look up the support set as it was BEFORE the step;
  it is then updated with the projections of the second view (lightly's example calls ``update=True`` for
  its second view; the paper's Algorithm 1 enqueues its first view, an equivalent choice since the two
  views are identically distributed); the nearest neighbour is by cosine similarity (argmax, first index
  on ties).
- Different: (1) entries are stored L2-normalised (lightly stores raw z); the lookup and NT-Xent normalise,
  so the loss is the same. (2) A true ring buffer: a batch that reaches past the end wraps to the start
  (lightly drops the rows that do not fit and resets its pointer to 0); both agree whenever K is a multiple
  of the global batch size. (3) The update happens in ``after_step`` (only in training mode), after the
  optimiser step, with the projections computed in the forward pass; lightly writes inside the forward
  pass, which gives the same contents. (4) Under torchrun the support set and the loss are global: z is
  gathered (no gradient) and p with ``gather_with_grad`` before the lookup and the NT-Xent, so every process
  holds the same support set and returns the loss of the global batch, and DDP's averaged gradients equal
  one process's on the concatenated batch (lightly's module keeps a per-process bank). (5) The support set
  and its pointer are persistent buffers (``support_set``, ``support_ptr``), so checkpoints carry them.

Heads (``cecl.models.mlp_head``): projector Linear(F, h)-BN-ReLU-Linear(h, d)-BN(affine=False), predictor
Linear(d, h_q)-BN-ReLU-Linear(h_q, d), with d = ``proj_dim`` 128, h = ``proj_hidden`` 512, h_q =
``pred_hidden`` 512 (lightly's example sizes; the paper uses a three-layer 2048-wide projector with BN on
every layer and a 4096-wide predictor on ResNet-50). ``batch_norm=False`` drops the BN layers: BN
statistics are per process, so exactness across process counts needs ``nn.SyncBatchNorm`` (CUDA) or no BN.
Logits and log-sum-exps are computed in float32 (float64 for float64 input) with autocast disabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cecl.distributed import gather_no_grad, gather_with_grad
from cecl.losses._common import autocast_disabled, check_count, check_positive, compute_dtype
from cecl.losses.supcon import SimCLRLoss
from cecl.methods.queue import fifo_slots
from cecl.methods.registry import register_method
from cecl.methods.siamese import PredictorMethod, predictor_method, two_views
from cecl.models import Encoder
from cecl.plugin_options import NNCLROptions, default_of


@torch.no_grad()
def nearest_neighbours(z: Tensor, support: Tensor) -> Tensor:
    """For each row of ``z`` [B, D], the row of ``support`` [K, D] with the highest cosine similarity."""
    similarity = F.normalize(z, dim=1) @ F.normalize(support.to(z.dtype), dim=1).T
    return support.to(z.dtype).index_select(0, similarity.argmax(dim=1))


def ntxent(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent on the pairs (a_i, b_i), a, b [B, D]; equals lightly's ``NTXentLoss(t)(a, b)``."""
    return SimCLRLoss(temperature, temperature)(torch.stack([a, b], dim=1))


def nnclr_loss(nn1: Tensor, nn2: Tensor, p1: Tensor, p2: Tensor, temperature: float) -> Tensor:
    """0.5 * [NTXent(NN(z1), p2) + NTXent(NN(z2), p1)] (the neighbours carry no gradient)."""
    return 0.5 * (ntxent(nn1.detach(), p2, temperature) + ntxent(nn2.detach(), p1, temperature))


class NNCLR(PredictorMethod):
    """NNCLR: NT-Xent between each view's prediction and the support-set neighbour of the other's projection.

    Options: ``temperature`` (float > 0, 0.1); ``queue_size`` (int >= 1, 4096): support-set size K, keep it
    below the training-set size; ``proj_dim`` (int, 128), ``proj_hidden`` (int, 512), ``pred_hidden`` (int,
    512): head widths; ``batch_norm`` (bool, True): BatchNorm1d in the heads (module docstring).
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        temperature: float = default_of(NNCLROptions, "temperature"),
        queue_size: int = 4096,
        proj_dim: int = 128,
        proj_hidden: int = 512,
        pred_hidden: int = 512,
        batch_norm: bool = True,
    ) -> None:
        temperature = check_positive("temperature", temperature)
        check_count("queue_size", queue_size)
        kw = {"proj_hidden": proj_hidden, "pred_hidden": pred_hidden, "batch_norm": batch_norm}
        super().__init__(encoder, proj_dim=proj_dim, **kw, output_norm=True)
        self.temperature = temperature
        self.register_buffer("support_set", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("support_ptr", torch.zeros((), dtype=torch.long))
        self._pending: list[Tensor] = []

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, queue_size={self.queue_size}, {super().extra_repr()}"

    @property
    def queue_size(self) -> int:
        return int(self.support_set.shape[0])

    def embed(self, views: Tensor, labels: Tensor | None = None) -> tuple[Tensor, ...]:
        """(z1, z2, p1, p2), each [b, D]: projections and predictions of each view (one call per view)."""
        x1, x2 = two_views(self, views)
        z1, z2 = self.projector(self.encoder(x1)), self.projector(self.encoder(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return z1, z2, p1, p2

    def loss_from(self, embeddings: tuple[Tensor, ...], labels: Tensor | None = None) -> Tensor:
        """The NNCLR loss on the global batch; keeps the gathered z2 for the support-set update."""
        z1, z2, p1, p2 = embeddings
        with autocast_disabled(p1.device.type):
            dtype = compute_dtype(p1.dtype)
            z1, z2 = (F.normalize(gather_no_grad(z.detach()).to(dtype), dim=1) for z in (z1, z2))
            p1, p2 = (gather_with_grad(p).to(dtype) for p in (p1, p2))
            support = self.support_set.to(dtype)
            loss = nnclr_loss(
                nearest_neighbours(z1, support), nearest_neighbours(z2, support), p1, p2, self.temperature
            )
        if self.training:
            self._pending.append(z2)
        return loss

    @torch.no_grad()
    def enqueue(self, projections: Tensor) -> None:
        """Append ``projections`` [n, D] to the support set, overwriting the oldest entries (ring buffer)."""
        index, kept = fifo_slots(self.support_ptr, projections.shape[0], self.queue_size)
        rows = projections[projections.shape[0] - kept :]
        self.support_set[index] = F.normalize(rows, dim=1).to(self.support_set.dtype)

    def after_step(self) -> None:
        """Enqueue the second view's projections of the step (all processes, rank order)."""
        for projections in self._pending:
            self.enqueue(projections)
        self._pending.clear()


register_method("nnclr")(predictor_method(NNCLR))
