"""URLs that may carry a secret: shown redacted, and read for the options we put in them.

A state URL (``redis://user:password@host:6379/0``) is kept whole for connecting, and everything
that shows it (a config's ``repr`` and dumps, the Redis state's log lines) shows it through
``redact_url``, so the one format is written here. Neutral: it imports nothing of the package.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

__all__ = ["redact_url", "take_query_options", "url_problem"]

_HIDDEN = "***"
# redis-py reads a password from the query too (the documented form for unix:// sockets), and
# passes any parameter it does not know to the connection: ``ssl_password`` is one.
_SECRET_PARAMETER = re.compile(r"password|secret|token", re.IGNORECASE)
# What may stand between ``://`` and the path when no user part is there: hosts, each with an
# optional port (a cluster URL lists several).
_HOSTS = re.compile(r"(?:\[[^\]]*\]|[^:,\[\]]*)(?::\d*)?(?:,(?:\[[^\]]*\]|[^:,\[\]]*)(?::\d*)?)*")


def redact_url(url: str) -> str:
    """The URL with every password in it replaced by ``***``; the rest kept as written.

    ``redis://user:pw@host:6379/0?password=pw`` reads
    ``redis://user:***@host:6379/0?password=***``. A user part without a colon is hidden whole
    (``***@host``): it may be a password written without its user, and nothing shows it is not.
    A query parameter whose name holds ``password``, ``secret`` or ``token`` (``ssl_password``)
    is hidden too, and so is a password with an unencoded ``/`` or ``?`` in it.
    A string that is not a URL with a user part or a query (``memory``) comes back unchanged.

    Args:
        url: Any URL, or a plain word such as ``memory``.

    Returns:
        The URL safe to show in logs, ``repr`` and dumps.
    """
    # By hand rather than urlsplit/urlunsplit: those drop the empty host of ``unix:///path``.
    scheme, slashes, rest = url.partition("://")
    head = ""
    if slashes:
        head = f"{scheme}://"
        end = _user_part_end(rest)
        if end >= 0:
            user, colon, _ = rest[:end].partition(":")
            head += f"{user}:{_HIDDEN}@" if colon else f"{_HIDDEN}@"
            rest = rest[end + 1 :]
    else:
        rest = url
    base, question, query = rest.partition("?")
    if question:
        query = "&".join(_redacted_parameter(item) for item in query.split("&"))
    return f"{head}{base}{question}{query}"


def _user_part_end(rest: str) -> int:
    """Where the user part of ``rest`` (a URL after ``://``) ends: its ``@``, or -1 for none."""
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority = rest[:cut]
    if "@" in authority:
        return authority.rindex("@")  # a host holds no "@": the last one ends the user part
    if not authority or "@" not in rest:
        return -1
    # A password holding an unencoded "/" or "?" ends the authority early. Then what is left of
    # it is no list of hosts (``user:pa/ss@host`` reads as host "user", port "pa"), or the "@"
    # lands in the path or in a query parameter's name, where none belongs: hide to the last
    # "@" (more than the password, at worst, never less).
    path, _, query = rest[cut:].partition("?")
    names = [item.partition("=")[0] for item in query.split("&")]
    if not _HOSTS.fullmatch(authority) or "@" in path or any("@" in n for n in names):
        return rest.rindex("@")
    return -1


def _redacted_parameter(item: str) -> str:
    name, equals, _ = item.partition("=")
    if equals and _SECRET_PARAMETER.search(unquote(name)):
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


def url_problem(url: str) -> str | None:
    """What makes an http(s) URL unusable (a space, no host, a port out of range), or ``None``.

    Checked when a config is read, so ``pllm check`` and the constructor say it, not the first
    request's connection error.
    """
    if any(c.isspace() for c in url):
        return "it contains a space"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError as e:
        return str(e)
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "port 0 is not a port"
    return None
