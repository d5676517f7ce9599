"""Multimodal Compact Bilinear pooling (Fukui et al., 2016; Gao et al., 2016), as used by seed 000.

The outer product of a visual vector ``v`` (n1) and a text vector ``t`` (n2) has n1*n2 entries. Its Count Sketch
(Charikar et al., 2002) with the combined hash ``h(i, j) = (h1(i) + h2(j)) mod d`` and sign ``s1(i) s2(j)`` equals
the circular convolution of the two vectors' own sketches, which the FFT turns into an element-wise product:

    MCB(v, t) = IFFT(FFT(Psi(v)) * FFT(Psi(t)))

so the d-dimensional result is computed without forming the outer product. Hashes and signs are drawn once from
a seed and kept as buffers, so a checkpoint carries them and a reloaded model computes the same function.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CountSketch(nn.Module):
    """Count Sketch projection ``Psi: R^n -> R^d``: ``y[h[i]] += s[i] * x[i]``.

    Implemented as a product with a fixed sparse-in-spirit dense matrix (n x d), which is fast for the
    n <= a few thousand used here and runs unchanged on CPU and CUDA.
    """

    def __init__(self, in_dim: int, out_dim: int, generator: torch.Generator) -> None:
        super().__init__()
        hashes = torch.randint(out_dim, (in_dim,), generator=generator)
        signs = torch.randint(2, (in_dim,), generator=generator) * 2 - 1
        self.register_buffer("hashes", hashes)
        self.register_buffer("signs", signs.float())
        self.in_dim, self.out_dim = in_dim, out_dim

    def matrix(self) -> Tensor:
        """The (in_dim, out_dim) projection matrix with ``signs[i]`` at ``(i, hashes[i])``."""
        m = torch.zeros(self.in_dim, self.out_dim, device=self.signs.device, dtype=self.signs.dtype)
        m[torch.arange(self.in_dim, device=m.device), self.hashes] = self.signs
        return m

    def forward(self, x: Tensor) -> Tensor:
        """``x[..., in_dim] -> [..., out_dim]``."""
        return x @ self.matrix().to(x.dtype)


class CompactBilinearPooling(nn.Module):
    """MCB fusion of two vectors per position.

    Args:
        visual_dim: n1, channels of the visual input.
        text_dim: n2, size of the text vector.
        out_dim: d, size of the sketch (the paper's MCB output size; 16,000 in Fukui et al., smaller here).
        signed_sqrt_l2: apply ``sign(x) sqrt(|x|)`` then L2 normalisation over the d outputs, as Fukui et al. do
            after MCB; keeps the 1x1 convolutions that follow well conditioned.
        seed: seed of the hashes and signs.
    """

    def __init__(
        self, visual_dim: int, text_dim: int, out_dim: int, signed_sqrt_l2: bool = True, seed: int = 0
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.sketch_visual = CountSketch(visual_dim, out_dim, generator)
        self.sketch_text = CountSketch(text_dim, out_dim, generator)
        self.out_dim = out_dim
        self.signed_sqrt_l2 = signed_sqrt_l2

    def forward(self, visual: Tensor, text: Tensor) -> Tensor:
        """Fuse ``visual[..., n1]`` with ``text[..., n2]`` (broadcast over leading dims) -> ``[..., d]``.

        The FFT runs in float32 even under autocast: half-precision FFTs need power-of-two sizes and lose the
        small products that the sketch adds up.
        """
        # Autocast would run the sketch's matrix product in bf16; switch it off for the whole fusion.
        with torch.autocast(device_type=visual.device.type, enabled=False):
            v = torch.fft.rfft(self.sketch_visual(visual.float()), dim=-1)
            t = torch.fft.rfft(self.sketch_text(text.float()), dim=-1)
            fused = torch.fft.irfft(v * t, n=self.out_dim, dim=-1)
            if self.signed_sqrt_l2:
                fused = torch.sign(fused) * torch.sqrt(fused.abs() + 1e-8)
                fused = nn.functional.normalize(fused, dim=-1)
        return fused
