"""Errors shared across stages."""


class UserError(Exception):
    """A problem the user can fix (bad parameter, occupied port, missing binary, bad data
    file): the CLI prints it as one clear line, without a traceback, and exits 2."""


class ServiceUnavailable(UserError):
    """Redis or Kafka does not answer at the configured address (see `homefeed.preflight`)."""

    def __init__(self, service: str, address: str, reason: str, hint: str):
        self.service, self.address, self.reason, self.hint = service, address, reason, hint
        super().__init__(f"{service} at {address} does not answer ({reason}): {hint}")
