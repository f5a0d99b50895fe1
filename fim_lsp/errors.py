"""The errors whose message is meant for the user: it says what is wrong and what to do."""


class FimLspError(Exception):
    """A failure the user can fix; the server shows the message and stays up."""


class EngineError(FimLspError, RuntimeError):
    """The model cannot be loaded or run."""


class TokenizerError(FimLspError, ValueError):
    """A tokenizer that cannot build FIM prompts."""
