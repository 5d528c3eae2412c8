"""The project's refusals: input that cannot do what was asked, as opposed to a bug.

`python -m resnet_lit` says a `BadInput` in one line and exits with status 2; any other exception
is a bug (ours or a library's) and shows its traceback. It is a `ValueError`, so code that uses
the classes directly can catch it as one.
"""

import sys


class BadInput(ValueError):
    """The input given cannot do what was asked; the message says what is wrong and how to fix it."""


class NonFiniteLossError(ArithmeticError):
    """The training loss became NaN or infinite (python -m resnet_lit exits with status 1)."""


def say_refusal(message: str, code: int = 2) -> int:
    """Print `error: message` on stderr and return the exit status (for the report and sweep commands)."""
    print(f"error: {message}", file=sys.stderr)
    return code
