"""cprfa: robust 3D face alignment with Convolutional Point-set Representations.

``from cprfa import FaceAligner, FaceResult`` (cprfa.align); imported on first use, so that ``import cprfa``
stays light.
"""

__version__ = "0.1.0"
__all__ = ["FaceAligner", "FaceResult"]


def __getattr__(name: str):
    if name in __all__:
        from cprfa import align

        return getattr(align, name)
    raise AttributeError(f"module 'cprfa' has no attribute {name!r}")
