"""The errors lungseg raises for problems a user can fix: each message names the file, key or
value and says what was expected. Stage scripts print these without a traceback."""

import errno


def os_error_text(error: OSError) -> str:
    """An OSError as one short phrase: 'No space left on device (ENOSPC)'.

    Args:
        error: the OSError.

    Returns:
        Its reason and errno name.
    """
    return f"{error.strerror or error} ({errno.errorcode.get(error.errno, str(error.errno))})"


class LungsegError(ValueError):
    """Base of every user-facing error."""


class ParamsError(LungsegError):
    """params.yaml is missing, malformed or holds values outside what is allowed."""


class DataError(LungsegError):
    """One or more problems with the input data; the message lists each with its file.

    Args:
        summary: the first line of the message.
        problems: one line per problem, kept in `problems`; the message lists the first MAX_LISTED of them.
    """

    MAX_LISTED = 20

    def __init__(self, summary: str, problems: list[str] | None = None):
        self.problems = problems or []
        listed = "".join(f"\n  - {p}" for p in self.problems[: self.MAX_LISTED])
        more = len(self.problems) - self.MAX_LISTED
        super().__init__(summary + listed + (f"\n  ... and {more} more" if more > 0 else ""))


class CheckpointError(LungsegError):
    """A checkpoint file that is missing, unreadable, or not a lungseg model."""


class TrainingError(LungsegError):
    """Training cannot go on (non-finite loss, out of memory); the message says what to change."""


class ExportError(LungsegError):
    """A model cannot be exported (missing optional packages, or the exported copy disagrees with PyTorch)."""


class ImageReadError(LungsegError):
    """A file that cannot be read as an image; the message names the file and the reason.

    A LungsegError, so every command and stage prints it without a traceback.
    """


class WriteFailed(Exception):
    """A write into --out failed mid-run (a full disk, a folder made read-only): the run stops.

    Args:
        error: the OSError.
        rows: the CSV rows of the images finished before it, in job order.
    """

    def __init__(self, error: OSError, rows: list[dict]):
        super().__init__(str(error))
        self.error, self.rows = error, rows
