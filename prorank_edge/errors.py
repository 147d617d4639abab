"""User-facing errors: the CLI prints their message on one line and exits with status 2, no traceback."""


class ProrankError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""


class ContractError(ProrankError):
    """A scoring contract, tokenizer or model that cannot be scored the ProRank way."""


class InputError(ProrankError):
    """Bad input data: names the file, line and field."""


class ModelNotFoundError(ProrankError):
    """A model that could not be found locally or fetched."""


class MissingExtraError(ProrankError):
    """An optional backend whose dependencies are not installed."""

    def __init__(self, feature: str, extra: str, missing: str):
        super().__init__(
            f"{feature} needs the optional dependency {missing!r}: install it with "
            f"`pip install 'prorank-edge[{extra}]'`"
        )
        self.extra = extra
