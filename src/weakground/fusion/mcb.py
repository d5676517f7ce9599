"""Multimodal Compact Bilinear pooling (Fukui et al., 2016; Gao et al., 2016), as used by Fang et al..

The outer product of a visual vector ``v`` (n1) and a text vector ``t`` (n2) has n1*n2 entries. Its Count Sketch
(Charikar et al., 2002) with the combined hash ``h(i, j) = (h1(i) + h2(j)) mod d`` and sign ``s1(i) s2(j)`` equals
the circular convolution of the two vectors' own sketches, which the FFT turns into an element-wise product:

    MCB(v, t) = IFFT(FFT(Psi(v)) * FFT(Psi(t)))

so the d-dimensional result is computed without forming the outer product. Hashes and signs are drawn once from
a seed and kept as buffers, so a checkpoint carries them and a reloaded model computes the same function.

When a linear layer follows (Fang et al.'s first 1x1 convolution), :meth:`CompactBilinearPooling.fused_linear`
goes one step further and never forms the d-dimensional result either (possible unless the signed square root,
which acts on each of the d entries, sits in between).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# What follows the sketch product: Fukui et al.'s signed square root then L2 normalisation, L2 only, or nothing.
MCB_POST = ("signed_sqrt_l2", "l2", "none")


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
        post: ``"signed_sqrt_l2"``: ``sign(x) sqrt(|x|)`` then L2 normalisation over the d outputs, as Fukui et
            al. do after MCB; ``"l2"``: L2 normalisation only (Fang et al. names no post-processing; the norm keeps
            the 1x1 convolutions that follow well conditioned); ``"none"``: the raw sketch product.
        seed: seed of the hashes and signs.
    """

    def __init__(
        self, visual_dim: int, text_dim: int, out_dim: int, post: str = "signed_sqrt_l2", seed: int = 0
    ) -> None:
        super().__init__()
        if post not in MCB_POST:
            raise ValueError(f"post must be one of {', '.join(MCB_POST)}, got {post!r}")
        generator = torch.Generator().manual_seed(seed)
        self.sketch_visual = CountSketch(visual_dim, out_dim, generator)
        self.sketch_text = CountSketch(text_dim, out_dim, generator)
        self.out_dim = out_dim
        self.post = post

    @property
    def fuses_linear(self) -> bool:
        """Whether :meth:`fused_linear` applies: not after the signed square root, which acts on each entry."""
        return self.post != "signed_sqrt_l2"

    def _spectra(self, visual: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        return (torch.fft.rfft(self.sketch_visual(visual.float()), dim=-1),
                torch.fft.rfft(self.sketch_text(text.float()), dim=-1))

    def forward(self, visual: Tensor, text: Tensor) -> Tensor:
        """Fuse ``visual[..., n1]`` with ``text[..., n2]`` (broadcast over leading dims) -> ``[..., d]``.

        The FFT runs in float32 even under autocast: half-precision FFTs need power-of-two sizes and lose the
        small products that the sketch adds up.
        """
        # Autocast would run the sketch's matrix product in bf16; switch it off for the whole fusion.
        with torch.autocast(device_type=visual.device.type, enabled=False):
            v, t = self._spectra(visual, text)
            fused = torch.fft.irfft(v * t, n=self.out_dim, dim=-1)
            if self.post == "signed_sqrt_l2":
                fused = torch.sign(fused) * torch.sqrt(fused.abs() + 1e-8)
            if self.post != "none":
                fused = nn.functional.normalize(fused, dim=-1)
        return fused

    def fused_linear(self, visual: Tensor, text: Tensor, linear: nn.Linear) -> Tensor:
        """``linear(MCB(v, t))`` for every pair of a position and a query, without forming the d-vectors.

        Args:
            visual: ``[B, S, n1]`` (S positions); text: ``[B, P, n2]`` or ``[1, P, n2]`` (P queries).
            linear: a ``d -> H`` linear layer.

        Returns:
            ``[B, P, S, H]``, equal to ``linear(self(visual[:, None], text[:, :, None]))``.

        Only for ``post`` ``"l2"`` or ``"none"``. Why it works: the sketch sends the outer product's entry
        ``v_i t_j`` to bin ``(h1(i) + h2(j)) mod d`` with sign ``s1(i) s2(j)``, so a linear layer ``W`` on the
        sketch is the bilinear form ``W x = sum_ij v_i t_j s1(i) s2(j) W[:, (h1(i) + h2(j)) mod d]``: its
        ``H x n1 x n2`` tensor is a gather of W's columns. Each query contracts it to an ``H x n1`` matrix, and
        each position costs ``n1 x H``, instead of the FFT, the d-vectors (``d`` is usually several times
        ``n1``) and the layer.
        The L2 norm comes from Parseval's theorem, ``|x|^2 = sum_k c_k / d |V_k|^2 |T_k|^2`` (V, T the
        sketches' spectra; ``c_k`` = 2, except 1 at the frequencies 0 and d/2), a product of size K = d // 2 + 1
        per pair. On a CPU the unfused path is bound by the memory traffic of the d-vectors.
        """
        if not self.fuses_linear:
            raise ValueError("fused_linear needs post 'l2' or 'none': the signed square root acts on each of the "
                             "d entries, so the d-vectors must be formed")
        d = self.out_dim
        with torch.autocast(device_type=visual.device.type, enabled=False):
            visual, text = visual.float(), text.float()
            one, two = self.sketch_visual, self.sketch_text
            bins = (one.hashes[:, None] + two.hashes[None, :]) % d  # [n1, n2]
            signs = one.signs[:, None] * two.signs[None, :]
            bilinear = linear.weight.float()[:, bins] * signs  # [H, n1, n2]
            h, n1, n2 = bilinear.shape
            per_query = (text @ bilinear.reshape(h * n1, n2).T).unflatten(-1, (h, n1))  # [B|1, P, H, n1]
            out = visual[:, None] @ per_query.transpose(-1, -2)  # [B, P, S, H]
            if self.post == "l2":
                v, t = self._spectra(visual, text)  # [B, S, K], [B|1, P, K]
                k = v.shape[-1]
                c = torch.full((k,), 2.0 / d, device=v.device)
                c[0] = 1.0 / d
                if d % 2 == 0:
                    c[-1] = 1.0 / d
                power = (v.real.square() + v.imag.square()) * c  # [B, S, K]
                norm2 = (t.real.square() + t.imag.square()) @ power.transpose(-1, -2)  # [B, P, S]
                # F.normalize divides by max(|x|, 1e-12)
                out = out / norm2.clamp_min(1e-24).sqrt()[..., None]
            if linear.bias is not None:
                out = out + linear.bias.float()
        return out
