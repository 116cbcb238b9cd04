"""The one exception type serlib raises for bad input."""


class SerlibError(ValueError):
    """Bad input to serlib: a missing or malformed file, an invalid parameter value.

    The message always names the offending file (and line, where there is one) or the
    parameter and its value, so that it can be shown to a user as it is.
    """
