"""URLs that may carry a secret: shown redacted, and read for the options we put in them.

A state URL (``redis://user:password@host:6379/0``) is kept whole for connecting, and everything
that shows it (a config's ``repr`` and dumps, the Redis state's log lines) shows it through
``redact_url``, so the one format is written here. Neutral: it imports nothing of the package.
"""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import parse_qsl, unquote, urlencode

__all__ = ["redact_url", "take_query_options"]

_HIDDEN = "***"
# redis-py reads a password from the query too (the documented form for unix:// sockets).
_SECRET_PARAMETERS = frozenset({"password"})


def redact_url(url: str) -> str:
    """The URL with every password in it replaced by ``***``; the rest kept as written.

    ``redis://user:pw@host:6379/0?password=pw`` reads
    ``redis://user:***@host:6379/0?password=***``. A user part without a colon is hidden whole
    (``***@host``): it may be a password written without its user, and nothing shows it is not.
    A string that is not a URL with a user part or a query (``memory``) comes back unchanged.

    Args:
        url: Any URL, or a plain word such as ``memory``.

    Returns:
        The URL safe to show in logs, ``repr`` and dumps.
    """
    # By hand rather than urlsplit/urlunsplit: those drop the empty host of ``unix:///path``.
    base, question, query = url.partition("?")
    if question:
        query = "&".join(_redacted_parameter(item) for item in query.split("&"))
    scheme, slashes, rest = base.partition("://")
    if slashes:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            userinfo, host = authority.rsplit("@", 1)
            user, colon, _ = userinfo.partition(":")
            hidden = f"{user}:{_HIDDEN}" if colon else _HIDDEN
            base = f"{scheme}://{hidden}@{host}{slash}{path}"
    return f"{base}{question}{query}"


def _redacted_parameter(item: str) -> str:
    name, equals, _ = item.partition("=")
    if equals and unquote(name).lower() in _SECRET_PARAMETERS:
        return f"{name}={_HIDDEN}"
    return item


def take_query_options(url: str, names: Collection[str]) -> tuple[str, dict[str, str]]:
    """Take the query parameters named ``names`` off ``url``, for a client that refuses them.

    Args:
        url: The URL as configured.
        names: The parameters that are ours rather than the client's.

    Returns:
        The URL without those parameters (the others kept, in order), and their values.
    """
    base, question, query = url.partition("?")
    if not question:
        return url, {}
    query, hash_mark, fragment = query.partition("#")
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in names:
            ours[name] = value
        else:
            theirs.append((name, value))
    kept = f"?{urlencode(theirs)}" if theirs else ""
    return f"{base}{kept}{hash_mark}{fragment}", ours
