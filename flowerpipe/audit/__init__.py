"""The audit stage's code: which train and val photos are probably filed under the wrong class."""
