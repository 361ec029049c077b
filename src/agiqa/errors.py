"""Errors the CLI reports as a message rather than a stack trace."""


class AgiqaError(Exception):
    """Base class: a problem with the user's input that the message fully explains."""


class DatasetValidationError(AgiqaError, ValueError):
    """A label file or dataset root fails validation; the message lists every offending row/file."""


class ImageLoadError(AgiqaError, OSError):
    """An image file is missing, unreadable or corrupt; `path` names it."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ImageTooLargeError(ImageLoadError):
    """An image has more pixels than the limit (`max_pixels`) or Pillow's decompression-bomb guard allows."""


class ConfigError(AgiqaError, ValueError):
    """An experiment config (YAML or `--set` override) has an unknown key or a value of the wrong type."""


class InvalidOptionError(AgiqaError, ValueError):
    """An option's value is not one of those accepted; the message lists them."""


class UntrustedFileError(AgiqaError):
    """A pickle (checkpoint, feature file) holds Python objects other than weights, which could run code: refused
    (``weights_only=True``) before anything in it runs."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        super().__init__(f"{self.path}: refused to load: its pickle holds Python objects beyond tensors and plain "
                         f"values, which could run code ({reason}). Use files from sources you trust.")
