"""The exceptions the library raises.

Only ``startprof.cli`` turns them into messages and exit codes.
"""

from __future__ import annotations


class StartprofError(Exception):
    """Base of every error startprof reports to a user as one line.

    ``fix`` is an optional hint telling the user what to do about it.
    """

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message} ({self.fix})"


class InputError(StartprofError):
    """The user gave something unusable: a bad flag combination, a missing or damaged file,
    an unknown pod or handler."""

    exit_code = 2


class RecordingError(InputError):
    """A recording that cannot be read: missing, empty, truncated, foreign or from the future."""


class PrivilegeError(StartprofError):
    """The operation needs root (or CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN)."""


class EnvironmentProblem(StartprofError):
    """The machine lacks something startprof needs (a kernel feature, a binary, headers)."""


class LabError(StartprofError):
    """The embedded lab containerd could not be brought up, driven or torn down."""


class CriError(StartprofError):
    """A CRI call failed or the CRI socket does not answer."""


class ExportError(StartprofError):
    """An export target did not accept the traces."""


class InternalError(StartprofError):
    """A bug: an unexpected exception, e.g. inside the analysis of a file. One line names what
    was being done; ``startprof --debug`` shows the traceback (``__cause__``)."""

    exit_code = 70  # EX_SOFTWARE: distinct from bad input (2), so tests and scripts tell them apart

    @classmethod
    def of(cls, what: str, exc: BaseException) -> InternalError:
        """``<what> failed (<ExceptionType>: <first line>); this is a bug``."""
        text = str(exc).strip()
        detail = text.splitlines()[0] if text else "no message"
        return cls(
            f"{what} failed ({type(exc).__name__}: {detail}); this is a bug",
            fix="run `startprof --debug ...` for the traceback and report it",
        )
