"""A VQ-VAE codebook (van den Oord et al. 2017) for the optional discrete LAPO bottleneck.

A latent of ``D`` values is cut into ``D / code_dim`` vectors; each is replaced by its nearest code
in one shared codebook of ``num_codes`` vectors. Gradients pass straight through the rounding
(the decoder's gradient w.r.t. the quantised latent is copied onto the continuous one), and

    loss = ||sg[z] - e||^2  (moves the codes)  +  commitment * ||z - sg[e]||^2  (keeps z near its code)

with mean squared errors. The original LAPO keeps codes as exponential moving averages instead
of the first term and uses 2 codebooks; one gradient-trained codebook is the textbook version.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class Quantized(NamedTuple):
    latent: torch.Tensor  # (B, D): the codes, with straight-through gradients to the input
    loss: torch.Tensor  # codebook + commitment loss
    codes: torch.Tensor  # (B, D / code_dim) code indices
    perplexity: torch.Tensor  # exp(entropy) of code use in the batch: 1 = one code, num_codes = all equally


class VectorQuantizer(nn.Module):
    def __init__(self, num_codes: int = 64, code_dim: int = 16, commitment: float = 0.25) -> None:
        super().__init__()
        self.code_dim, self.commitment = code_dim, commitment
        self.codebook = nn.Parameter(torch.empty(num_codes, code_dim).uniform_(-1 / num_codes, 1 / num_codes))

    def forward(self, z: torch.Tensor) -> Quantized:
        if z.shape[-1] % self.code_dim:
            raise ValueError(f"latent size {z.shape[-1]} is not a multiple of the code size {self.code_dim}")
        flat = z.reshape(-1, self.code_dim)
        distances = torch.cdist(flat.detach(), self.codebook.detach())
        codes = distances.argmin(dim=1)
        quantized = self.codebook[codes].view_as(z)
        loss = F.mse_loss(quantized, z.detach()) + self.commitment * F.mse_loss(z, quantized.detach())
        usage = F.one_hot(codes, len(self.codebook)).float().mean(0)
        perplexity = torch.exp(-(usage * torch.log(usage + 1e-10)).sum())
        return Quantized(z + (quantized - z).detach(), loss, codes.view(z.shape[0], -1), perplexity)
