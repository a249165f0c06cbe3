"""The SupContrast family's shared shell: options tau and tau_base, and the tau / tau_base scaling."""

from __future__ import annotations

from torch import Tensor, nn

from cecl.losses._common import check_positive


class TemperatureScaledLoss(nn.Module):
    """``forward = (tau / tau_base) * mean of per_anchor(features, labels)``: SupContrast's scaling.

    Subclasses implement ``per_anchor(features [B, V, D], labels [B] | None) -> [N]`` (unscaled, view-major).
    """

    def __init__(self, temperature: float, base_temperature: float) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.base_temperature = check_positive("base_temperature", base_temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, base_temperature={self.base_temperature}"

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        return (self.temperature / self.base_temperature) * self.per_anchor(features, labels).mean()

    def per_anchor(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        raise NotImplementedError
