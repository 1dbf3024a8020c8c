"""One family of errors a user can cause and fix; each message says what to do."""


class RagkitError(Exception):
    """A problem the user can fix (bad input, missing key, unknown model). The CLI prints it without a traceback."""


class UnknownModelError(RagkitError):
    pass


class ConfigError(RagkitError):
    pass


class MissingKey(ConfigError):
    """A model's API key variable is not set (`variable` names it; routing drops such a model)."""

    def __init__(self, message: str, variable: str):
        super().__init__(message)
        self.variable = variable


class InputError(RagkitError):
    """Missing path, empty folder, unreadable or unsupported file."""


class IndexError_(RagkitError):
    """Corrupt, locked or mismatched index."""


class ProviderError(RagkitError):
    """A model API call failed (after retries); the message names the endpoint or variable, never the key.

    `kind` says what failed, for code that decides what to do next (route.py's fallback) without
    reading the sentence: auth, not_found, rate_limit, server, timeout, connection, bad_request,
    context_length, malformed, incomplete_stream, or "" (anything else). Set where the SDK's
    exception is translated (providers/base.sdk_error)."""

    kind = ""

    def __init__(self, message: str = "", kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind

    def __reduce__(self):  # the kind survives pickling (process pools)
        return type(self), (str(self), self.kind)


class IndexBusy(IndexError_):
    """Another process holds the index's write lock (it is updating the index)."""

    def __init__(self, message: str, holder: str = ""):
        super().__init__(message)
        self.holder = holder


class IncompleteStream(ProviderError):
    """A streamed answer stopped before the model's end marker: the text so far is not an answer."""

    kind = "incomplete_stream"
