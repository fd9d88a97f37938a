"""CelebA dataset folder: model, training scripts and published tables."""
