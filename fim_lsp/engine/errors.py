"""The one error the engine raises: a message for the user that says what to do."""


class EngineError(RuntimeError):
    """The model cannot be loaded or run; the message says why and how to fix it."""
