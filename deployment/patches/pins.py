"""Each replacement of a library's internals names the versions it was verified against (VERIFIED: libraries,
and "python" where it relies on CPython's or the standard library's internals); with any other version
installed it stays off, logs one line, and the library's own code runs."""

import importlib.metadata
import logging
import sys

log = logging.getLogger("patches")


def installed_version(distribution):
    """The installed version of a distribution ("python" is the interpreter's major.minor)."""
    if distribution == "python":
        return "{}.{}".format(*sys.version_info[:2])
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def mismatches(verified):
    """{distribution: version found} for each distribution whose installed version is not a verified one."""
    found = {distribution: installed_version(distribution) for distribution in verified}
    return {distribution: version for distribution, version in found.items() if version not in verified[distribution]}


def verified(name, verified_versions):
    """True if every library the replacement `name` patches is a version it was verified against; else one
    log line naming it and the versions found, and False (the caller leaves the library as it is)."""
    wrong = mismatches(verified_versions)
    if not wrong:
        return True
    log.warning(
        "patch %s stays off: %s is not a version it was verified against (%s); the library's own code runs",
        name,
        ", ".join(f"{dist} {version or 'not installed'}" for dist, version in wrong.items()),
        ", ".join(f"{dist} {'/'.join(versions)}" for dist, versions in verified_versions.items()),
    )
    return False


def stays_off(name, reason, level=logging.WARNING):
    """A speedup's install() that finds it cannot run: one log line naming it and why, and False (the installer
    then leaves it out of the start log's list of speedups on)."""
    log.log(level, "speedup %s stays off: %s", name, reason)
    return False
