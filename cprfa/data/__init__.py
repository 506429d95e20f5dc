"""Reading user data: images (``images``) and face boxes (``boxes``)."""

from cprfa.data.images import load_image, save_image

__all__ = ["load_image", "save_image"]
