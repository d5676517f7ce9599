"""Multimodal Compact Bilinear pooling (Fukui et al., 2016; Gao et al., 2016), as used by seed 000.

The outer product of a visual vector ``v`` (n1) and a text vector ``t`` (n2) has n1*n2 entries. Its Count Sketch
(Charikar et al., 2002) with the combined hash ``h(i, j) = (h1(i) + h2(j)) mod d`` and sign ``s1(i) s2(j)`` equals
the circular convolution of the two vectors' own sketches, which the FFT turns into an element-wise product:

    MCB(v, t) = IFFT(FFT(Psi(v)) * FFT(Psi(t)))

so the d-dimensional result is computed without forming the outer product. Hashes and signs are drawn once from
a seed and kept as buffers, so a checkpoint carries them and a reloaded model computes the same function.

When a linear layer follows (seed 000's first 1x1 convolution), :meth:`CompactBilinearPooling.fused_linear`
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
            al. do after MCB; ``"l2"``: L2 normalisation only (seed 000 names no post-processing; the norm keeps
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

        Only for ``post`` ``"l2"`` or ``"none"``. Why it works: ``x = irfft(X)`` is a real linear map of
        ``(Re X, Im X)``, so ``W x`` is one too, with ``H x K`` matrices ``W_re, W_im`` (K = d // 2 + 1) read off
        by pushing unit spectra through ``irfft``. With ``X = V T`` element-wise, ``W x = [Re V, Im V] . A(T)``
        where ``A(T)`` depends on the query alone, so one batched product of size ``S x 2K x H`` per pair
        replaces the FFT, the d-vectors and the layer. The L2 norm comes from Parseval's theorem,
        ``|x|^2 = sum_k c_k / d |V_k|^2 |T_k|^2`` (``c_k`` = 2, except 1 at the frequencies 0 and d/2), another
        small product. On multi-MNIST this moves ~8x fewer bytes than the unfused path, which is bound by
        memory traffic on a CPU.
        """
        if not self.fuses_linear:
            raise ValueError("fused_linear needs post 'l2' or 'none': the signed square root acts on each of the "
                             "d entries, so the d-vectors must be formed")
        d = self.out_dim
        with torch.autocast(device_type=visual.device.type, enabled=False):
            v, t = self._spectra(visual, text)  # [B, S, K], [B|1, P, K]
            k = v.shape[-1]
            eye = torch.eye(k, device=v.device, dtype=v.dtype)
            weight = linear.weight.float()  # [H, d]
            w_re = weight @ torch.fft.irfft(eye, n=d, dim=-1).T  # [H, K]: W x for X = e_k
            w_im = weight @ torch.fft.irfft(1j * eye, n=d, dim=-1).T  # [H, K]: W x for X = i e_k
            # Re X = Re V Re T - Im V Im T and Im X = Re V Im T + Im V Re T, so W x = Re V . q_re + Im V . q_im:
            t_re, t_im = t.real[..., None, :], t.imag[..., None, :]  # [B|1, P, 1, K]
            q_re = t_re * w_re + t_im * w_im  # [B|1, P, H, K]
            q_im = t_im * w_re.neg() + t_re * w_im
            coefficients = torch.cat([q_re, q_im], dim=-1)  # [B|1, P, H, 2K]
            spectra = torch.cat([v.real, v.imag], dim=-1)[:, None]  # [B, 1, S, 2K]
            out = spectra @ coefficients.transpose(-1, -2)  # [B, P, S, H]
            if self.post == "l2":
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
