"""Per-particle features for repulsion, and the pull-back of a feature-space push (RLSD).

A feature map takes a solver state and returns (leaf, features): ``features`` (n, F) is a
differentiable function of ``leaf``. ``pullback`` turns a push (n, F) into a force of the
state's shape by a vector-Jacobian product. The leaf is the particles' clean estimate in the
sampling space: ``state.x0`` for pixel priors, ``encode(state.x0)`` for latent priors (pulled
back through the decoder). The force is applied to ``state.x`` as is, i.e. the Jacobian of the
clean estimate with respect to the noisy state is taken as the identity, as particle guidance
and RLSD do.

- ``pixels``: the decoded image itself;
- ``latent``: the sampling-space state ``state.x`` (the latent for latent priors); its push is
  the force, no Jacobian needed;
- ``dino``: the CLS token of a transformers ViT/DINOv2 model (hub id or local directory) on the
  decoded image, resized to the model's input size and normalised with ImageNet statistics.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from solvers.base import State
from solvers.priors.base import Prior

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureMap:
    """Features of a state and the pull-back of a push onto the state's space."""

    def __init__(self, kind: str, prior: Prior, dino_model: str | None = None) -> None:
        self.kind = kind
        self.prior = prior
        self.network = load_dino(dino_model) if kind == "dino" else None

    def __call__(self, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        """(leaf, features (n, F)); features carry a graph back to the leaf where needed."""
        if self.kind == "latent":
            leaf = state.x.detach()
            return leaf, leaf.flatten(1)
        with torch.no_grad():
            start = self.prior.encode(state.x0) if self.prior.is_latent else state.x0
        leaf = start.detach().requires_grad_(True)
        with torch.enable_grad():
            image = self.prior.decode(leaf) if self.prior.is_latent else leaf
            features = image.flatten(1) if self.network is None else self._dino(image)
        return leaf, features

    def pullback(
        self, leaf: torch.Tensor, features: torch.Tensor, push: torch.Tensor
    ) -> torch.Tensor:
        """J^T push: the force on each particle from its feature-space push."""
        push = push.to(device=features.device, dtype=features.dtype)
        if self.kind == "latent":
            return push.view_as(leaf)
        (force,) = torch.autograd.grad(features, leaf, push)
        return force.detach()

    def _dino(self, image: torch.Tensor) -> torch.Tensor:
        assert self.network is not None
        size = int(self.network.config.image_size)
        rgb = image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image
        rgb = F.interpolate((rgb + 1) / 2, size=(size, size), mode="bilinear", antialias=True)
        mean = rgb.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = rgb.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        net = self.network.to(device=rgb.device, dtype=rgb.dtype)
        return net(pixel_values=(rgb - mean) / std).last_hidden_state[:, 0]


def load_dino(model: str | None) -> torch.nn.Module:
    """A frozen transformers ViT/DINOv2 from a local directory or a hub id (safetensors)."""
    if not model:
        raise ValueError("dino features need a model: a hub id or a local directory")
    from transformers import AutoModel

    local = Path(model).is_dir()
    if not local and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise FileNotFoundError(
            f"dino_model {model!r} is not a folder; give a local folder holding a transformers "
            "ViT/DINOv2 model (config.json + model.safetensors) or a hub id such as "
            "'facebook/dinov2-small'"
        )
    network = AutoModel.from_pretrained(model, local_files_only=local, use_safetensors=True)
    return network.eval().requires_grad_(False)
