"""cprfa: robust 3D face alignment with Convolutional Point-set Representations."""

__version__ = "0.1.0"
