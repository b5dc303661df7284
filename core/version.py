"""The installed package's version, for ``--version`` and the OpenAPI document."""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "quads"


def package_version() -> str:
    """The version pyproject.toml gives, as installed; "unknown" when run from a tree that is not installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"
