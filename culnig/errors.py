"""User-facing errors: one line that says what is wrong and what to do."""


class CulnigError(Exception):
    """An error caused by the user's input or environment.

    The command line prints ``culnig: error: <message>`` and exits with status 2, without a
    traceback; everything else is a bug and keeps its traceback.
    """


class UnsupportedArchitecture(CulnigError):
    pass
