"""Errors a user can act on. Their message is shown as is: no traceback reaches a user."""


class TinyEmbedError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class ModelNotFoundError(TinyEmbedError):
    """No model directory matched the name; the message lists every place tried."""


class ModelLoadError(TinyEmbedError):
    """A model directory was found but one of its files is missing or wrong."""


class InputError(TinyEmbedError):
    """A request's input is invalid. `code` and `param` follow the OpenAI error envelope."""

    def __init__(self, message: str, code: str = "invalid_input", param: str | None = "input"):
        super().__init__(message)
        self.code = code
        self.param = param
