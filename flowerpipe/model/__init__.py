"""Torch-side models: architectures by name, building and loading them, tensor transforms, inference."""
