"""Architectures: CIFAR ResNet-20/32/56 (basic blocks) and CIFAR ResNet-50 (bottlenecks)."""

from .resnet_cifar import ARCHS, BasicBlock, Bottleneck, CifarResNet, CifarResNet50, Normalize

__all__ = ["ARCHS", "BasicBlock", "Bottleneck", "CifarResNet", "CifarResNet50", "Normalize"]
