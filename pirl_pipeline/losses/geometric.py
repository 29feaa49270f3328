"""Φ: the geometric transform set of Algorithm 1, with exact inverses."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class GeometricTransforms:
    """Φ = {phi_t}: rotations by k·90° in one plane (t = k), optionally followed by a flip (t = 4 + k).

    The rotation plane is the first pair of spatial axes of equal size in ``spatial_shape`` (so a transform
    keeps the shape). Every phi_t is a voxel permutation, hence exact on images (B, C, X, Y, Z) and on the
    bottleneck grid (B, C, X/32, Y/32, Z/32) of the same patch: phi_t^-1(phi_t(x)) == x bit for bit.
    Patches with three different sides have no such plane; Φ is then the group of axis flips
    (t's bits flip axes 0, 1, 2), also with exact inverses.
    """

    def __init__(self, spatial_shape: Sequence[int], num_transforms: int = 4) -> None:
        if num_transforms not in (4, 8):
            raise ValueError(f"num_transforms must be 4 (rotations) or 8 (rotations x flip); got {num_transforms}")
        shape = tuple(int(s) for s in spatial_shape)
        if len(shape) != 3:
            raise ValueError(f"expected 3 spatial sides, got {shape}")
        pairs = [(a, b) for a in range(3) for b in range(a + 1, 3) if shape[a] == shape[b]]
        self.num_transforms = num_transforms
        self.plane = (pairs[0][0] + 2, pairs[0][1] + 2) if pairs else None

    def __len__(self) -> int:
        return self.num_transforms

    def apply(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """phi_t(x) for x (..., C, X, Y, Z) with 3 trailing spatial dims at positions 2, 3, 4."""
        if self.plane is None:
            return self._flips(x, t)
        x = torch.rot90(x, t % 4, dims=self.plane)
        return torch.flip(x, dims=(self.plane[0],)) if t >= 4 else x

    def inverse(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """phi_t^-1(x)."""
        if self.plane is None:
            return self._flips(x, t)  # flips are involutions and commute
        if t >= 4:
            x = torch.flip(x, dims=(self.plane[0],))
        return torch.rot90(x, -(t % 4), dims=self.plane)

    def apply_batch(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """phi_{t[b]}(x[b]) for every sample b of x (B, C, X, Y, Z); t (B,) int."""
        return torch.cat([self.apply(x[b : b + 1], int(t[b])) for b in range(x.shape[0])])

    def inverse_batch(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """phi_{t[b]}^-1(x[b]) for every sample b."""
        return torch.cat([self.inverse(x[b : b + 1], int(t[b])) for b in range(x.shape[0])])

    def independent_mirror_axes(self, axes: Sequence[int] = (0, 1, 2)) -> tuple[int, ...]:
        """The spatial axes (0, 1, 2 = the patch's sides) among ``axes`` whose random mirroring does not
        overlap Φ. Mirroring both axes of the rotation plane IS the 180° rotation (and mirroring one of
        them is in Φ's flip half), so an augmentation that does either makes the equivariance target k
        indistinguishable from k + 2 (L_equ >= ln 2). Only the axis normal to the plane stays; with
        Φ = axis flips (no square plane) no mirroring axis is independent."""
        if self.plane is None:
            return ()
        return tuple(a for a in axes if a + 2 not in self.plane)

    def sample(self, batch: int) -> torch.Tensor:
        """Uniform random transform indices (B,) on the CPU (global torch RNG)."""
        return torch.randint(self.num_transforms, (batch,))

    @staticmethod
    def _flips(x: torch.Tensor, t: int) -> torch.Tensor:
        dims = tuple(2 + axis for axis in range(3) if t >> axis & 1)
        return torch.flip(x, dims=dims) if dims else x
