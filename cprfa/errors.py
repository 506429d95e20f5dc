"""The errors cprfa raises for bad input: each names the file or value and what is wrong with it."""


class CprfaError(Exception):
    """Base class of every error cprfa raises on purpose."""


class ModelFileError(CprfaError, ValueError):
    """A face-model or weights file is missing, corrupt, of the wrong format, or inconsistent."""


class ImageReadError(CprfaError, ValueError):
    """An image path does not exist or is not a readable image."""


class InvalidInputError(CprfaError, ValueError):
    """An array or option has the wrong shape, type, range, or contains NaN / inf."""
