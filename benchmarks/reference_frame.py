"""The reference frame's bias: in-sample PCA vs held-out whitening, and the W2_ref variants.

Two independent batches of one distribution (16-factor structure plus noise, like sentence embeddings):
a frame fitted on the reference batch itself (``Projection.fit``) makes the reference look more spread than
any later batch along its own top directions (they partly fit its noise when n ≲ d); ``fit_held_out``
takes the directions from one half and the whitening from the other. Printed: KL_ref, W2_ref and the
entropy gap between the reference and a later batch of the SAME law (all should be ≈ 0), then W2_ref's
floor for each ``w2_ref_method``. Run: ``python benchmarks/reference_frame.py``.
"""

from __future__ import annotations

import torch

from monitor.fpe import FPEConfig, Projection
from monitor.fpe.observables import observables_from_projected


def latents(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(16, d, generator=torch.Generator().manual_seed(99))
    return torch.randn(n, 16, generator=g) @ basis + 0.3 * torch.randn(n, d, generator=g)


def main() -> None:
    print("| n | d | frame | KL_ref | W2_ref (exact) | H(ref) − H(later) |")
    print("|---|---|---|---|---|---|")
    for n, d in [(256, 768), (1024, 768), (256, 64)]:
        ref, later = latents(n, d, 1), latents(n, d, 2)
        p_in = Projection.fit(ref, 8)
        p_ho, held = Projection.fit_held_out(ref, 8)
        for name, proj, x_ref in (
            ("in-sample", p_in, p_in.transform(ref)),
            ("held-out", p_ho, p_ho.transform(ref[held])),
        ):
            obs = observables_from_projected([], proj.transform(later), FPEConfig(), x_ref=x_ref)
            own = observables_from_projected([], x_ref, FPEConfig())
            gap = own.scalars["H"] - obs.scalars["H"]
            print(f"| {n} | {d} | {name} | {obs.scalars['KL_ref']:.3f} | {obs.scalars['W2_ref']:.3f} | {gap:.3f} |")
    print()
    print("| n | d | w2_ref_method | W2_ref floor (same law) |")
    print("|---|---|---|---|")
    for n, d in [(256, 768), (1024, 768)]:
        ref, later = latents(n, d, 1), latents(n, d, 2)
        proj, held = Projection.fit_held_out(ref, 8)
        x_ref = proj.transform(ref[held])
        for method in ("exact", "sinkhorn", "gaussian"):
            cfg = FPEConfig(w2_ref_method=method)  # type: ignore[arg-type]
            obs = observables_from_projected([], proj.transform(later), cfg, x_ref=x_ref)
            print(f"| {n} | {d} | {method} | {obs.scalars['W2_ref']:.3f} |")


if __name__ == "__main__":
    main()
