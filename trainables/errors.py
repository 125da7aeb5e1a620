"""The one user-error type, in a module of its own so config, registries and plug-ins can all raise it
without importing each other."""


class ConfigError(ValueError):
    """A user error in a config: the message is one line naming the field and the allowed values."""
