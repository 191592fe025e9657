"""The demo model's module class, with the saliency convention (see :mod:`.saliency`).

Kept apart from :mod:`medspark.inference.model` because it imports torch at module level (a
TorchScript class must be defined at module level for ``torch.jit.script`` to read its source),
and ``model.py`` is imported on the driver where torch is only loaded when a model is. No
``from __future__ import annotations`` here: TorchScript reads the annotations as types.
"""

import torch
from torch import nn


class SmallCNN(nn.Sequential):
    """``nn.Sequential`` of conv blocks then a pooling head, plus two exported methods.

    ``features(x)``: the activations of the first ``n_features`` layers, (N, C, h, w): the
    layer Grad-CAM looks at. ``head(f)``: the logits from those activations, (N, classes).
    ``forward(x) == head(features(x))`` exactly (the same layers in the same order), so
    Grad-CAM can differentiate the class score with respect to the feature map.

    The demo model splits after its third block (64 channels, 28 x 28 for a 224 input), not
    after the last (14 x 14): on the synthetic positives of its held-out seeds the map's peak
    fell inside the nodule (radius 5-9 px of a 256 px slice) for 79 of 100 slices there,
    against 44 of 100 on the last block, whose cells (18 px of the slice) are as large as the
    nodule (tests/test_saliency.py). Being a
    ``Sequential`` subclass, its ``state_dict`` keys are those of the plain ``Sequential`` the
    demo model was first trained as: the same weights load into either.
    """

    #: Layers in ``features``; the rest (the last conv block, pooling, linear) are the head.
    n_features: int

    def __init__(self, *layers: nn.Module, n_features: int) -> None:
        super().__init__(*layers)
        self.n_features = n_features

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Activations of the first ``n_features`` layers (the layer Grad-CAM looks at)."""
        for i, layer in enumerate(self):
            if i < self.n_features:
                x = layer(x)
        return x

    @torch.jit.export
    def head(self, f: torch.Tensor) -> torch.Tensor:
        """Logits from the :meth:`features` activations."""
        for i, layer in enumerate(self):
            if i >= self.n_features:
                f = layer(f)
        return f
