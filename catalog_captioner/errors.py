"""Errors that end a command with one clear sentence (never a traceback)."""


class CatcapError(Exception):
    """A fatal, user-facing problem; ``str(err)`` is the whole message."""

    exit_code = 1


class BundleError(CatcapError):
    """The model bundle is missing, corrupt or inconsistent."""


class CatalogError(CatcapError):
    """The catalog cannot be read or written as asked."""


class UsageError(CatcapError):
    """The command's arguments contradict each other or the data."""

    exit_code = 2


class DeviceError(CatcapError):
    """The requested execution device is not usable here."""
