"""The one exception type for errors a user can cause.

Errors of a candidate (build failure, crash, timeout, wrong result) are records, never
exceptions; this type is for bad input: a damaged model file, an unknown input name, an
unsupported operator. Its message names the input and says what to do; the CLI prints it
without a traceback.
"""


class AgoSearchError(Exception):
    """A user-facing error: the message names the input and says what to do."""


class ModelError(AgoSearchError):
    """The ONNX model cannot be loaded or imported as given."""


class UnsupportedOperatorsError(ModelError):
    """The model uses operators the TVM ONNX importer cannot convert."""

    def __init__(self, message: str, unsupported: dict[str, list[str]]):
        super().__init__(message)
        # op type -> names of the nodes that use it (all of them, in graph order)
        self.unsupported = unsupported
