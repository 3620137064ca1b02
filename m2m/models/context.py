"""Context encoders of Image-Set Attention: what the keys/values of eq. 4 are made from.

- M2M-Self (section 5.1): the UNet's own hidden states of the clean images, at every block.
- M2M-DINO (section 5.2): the last hidden states of a frozen DINOv2, one width for every block.

A model names its context encoder in its UNet config (``variant``, a name of this registry); the UNet,
the pipeline, training, the CLI and evaluation ask the registry what that name means, so a new encoder
is one ``register_context_encoder`` call. An external encoder is saved as the pipeline's
``image_encoder`` component: any transformers or diffusers model, which ``from_pretrained`` finds by
the class ``model_index.json`` names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from m2m.models.encoders import dino_encoder, dino_features


def hidden_size(encoder) -> int:
    """The width ``D`` of a transformers vision model's tokens."""
    return encoder.config.hidden_size


@dataclass(frozen=True)
class ContextEncoder:
    """One way of making the clean context that Image-Set Attention (eq. 4) attends to.

    Args:
        name: the UNet config's ``variant`` and the ``--variant`` choice.
        display_name: the method's name in logs and reports, e.g. ``M2M-DINO``.
        build: ``build(preset, folder)`` -> the frozen external encoder from the local ``folder`` (None:
            the preset's own); None: the context is the UNet's own clean hidden states (section 5.1).
        features: ``features(encoder, images, size)`` -> ``(B, N, S, D)`` tokens of images
            ``(B, N, 3, H, W)`` in ``[-1, 1]``, read at ``size`` px (the UNet config's ``dino_image_size``).
        width: the encoder's token width ``D``, the key/value width of every Image-Set Attention.
        stored_as: the name its features are stored under beside MIS shards (``generate-mis
            --precompute``); None when they never are.
    """

    name: str
    display_name: str
    build: Callable[[str, Path], object] | None = None
    features: Callable | None = None
    width: Callable[[object], int] = hidden_size
    stored_as: str | None = None

    @property
    def external(self) -> bool:
        """The context is a frozen encoder's features of the clean images, not the UNet's hidden states."""
        return self.build is not None

    def cross_attention_dim(self, unet_config: dict, context_dim: int | None) -> int | list[int]:
        """The key/value width of Image-Set Attention: each block's own width (Self), or the encoder's ``D``."""
        if not self.external:
            return list(unet_config["block_out_channels"])
        if not context_dim:
            raise ValueError(f"{self.display_name} needs context_dim: the hidden size of its context encoder")
        return int(context_dim)


SELF = ContextEncoder("self", "M2M-Self")
DINO = ContextEncoder("dino", "M2M-DINO", build=dino_encoder, features=dino_features, stored_as="dino")

CONTEXT_ENCODERS: dict[str, ContextEncoder] = {}


def register_context_encoder(encoder: ContextEncoder) -> ContextEncoder:
    """Make ``encoder`` a ``variant`` models can be built, trained, saved and loaded with."""
    if encoder.name in CONTEXT_ENCODERS:
        raise ValueError(f"a context encoder named {encoder.name!r} is registered already")
    if (encoder.build is None) != (encoder.features is None):
        raise ValueError(f"context encoder {encoder.name!r}: an external encoder needs both build and features")
    CONTEXT_ENCODERS[encoder.name] = encoder
    return encoder


def context_encoder(name: str) -> ContextEncoder:
    """The registered context encoder called ``name``, with a one-line error naming the known ones."""
    if name not in CONTEXT_ENCODERS:
        raise ValueError(f"unknown M2M variant {name!r}; expected one of {', '.join(CONTEXT_ENCODERS)}")
    return CONTEXT_ENCODERS[name]


def context_encoder_names() -> tuple[str, ...]:
    """The registered names, in the order they were registered: the ``--variant`` choices."""
    return tuple(CONTEXT_ENCODERS)


register_context_encoder(SELF)
register_context_encoder(DINO)
