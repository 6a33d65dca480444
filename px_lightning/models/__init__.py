"""Backbones and model factories: CIFAR ResNets, VGG, Tiny-ImageNet ResNet-18, torchvision models, segmentation."""
