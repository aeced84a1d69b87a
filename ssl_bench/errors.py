"""The one exception type for bad user input (exit code 2, one line, no traceback)."""


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown name, a wrong type.

    The message must name the offending file or key and say what would be valid;
    the CLI prints it on one line and exits with code 2.
    """

    exit_code = 2


class NotApplicable(UserError):
    """The protocol does not apply to this checkpoint (e.g. a ViT-only protocol on a ConvNet)."""
