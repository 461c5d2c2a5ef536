"""Backbones and heads (Flax NNX); ``__call__`` takes ``train=`` explicitly."""

from semi_ssl.models.heads import MLP, Prototypes
from semi_ssl.models.resnet import BACKBONES, STEMS, ResNet, create_backbone

__all__ = ['BACKBONES', 'MLP', 'Prototypes', 'ResNet', 'STEMS', 'create_backbone']
