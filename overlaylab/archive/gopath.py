"""Go's ``path/filepath`` string functions on Unix (https://pkg.go.dev/path/filepath, Go 1.5).

``os.path.normpath`` keeps a leading ``//`` and treats nothing else differently in a way that
matters here, but ``os.path.join`` restarts at an absolute component while Go's ``Join`` does
not, and ``os.path.dirname``/``basename`` do not clean. Tar names and change paths go through
these so that names, breakout checks and error texts match the reference.
"""
from __future__ import annotations


def clean(path: str) -> str:
    """``filepath.Clean``: lexical shortest equivalent; ``""`` -> ``"."``; ``..`` kept only
    at the start of a relative path and dropped at the root."""
    # Fast path for the common tar names "a/b", "./a/b", "./a/b/" and "/a/b": once at most
    # one leading "./" and one trailing "/" are taken off, a path that has no empty, "." or
    # ".." element is already clean. Such an element needs "//", a "/." or a leading "."
    # (or is the trailing "/" of "/" itself), so their absence proves cleanliness.
    p = path
    if p[:2] == "./":
        p = p[2:]
        if p[:1] == "/":  # ".//x" -> "x": the slow path knows
            p = ""
    if len(p) > 1 and p[-1] == "/":
        p = p[:-1]
    if p and p[0] != "." and p[-1] != "/" and "//" not in p and "/." not in p:
        return p
    if path == "":
        return "."
    rooted = path[0] == "/"
    out = []
    floor = 0  # leading ".." elements of a relative path cannot be backtracked over
    for comp in path.split("/"):
        if comp == "" or comp == ".":
            continue
        if comp == "..":
            if len(out) > floor:
                out.pop()
            elif not rooted:
                out.append("..")
                floor += 1
            continue
        out.append(comp)
    joined = "/".join(out)
    if rooted:
        return "/" + joined
    return joined or "."


def join(*elems: str) -> str:
    """``filepath.Join``: join the non-empty elements with ``/`` and clean; all empty -> ``""``."""
    parts = [e for e in elems if e]
    if not parts:
        return ""
    return clean("/".join(parts))


def split(path: str):
    """``filepath.Split``: ``dir`` up to and including the last ``/``, and the rest."""
    i = path.rfind("/")
    return path[: i + 1], path[i + 1:]


def dirname(path: str) -> str:
    """``filepath.Dir``: everything but the last element, cleaned (``"a"`` -> ``"."``)."""
    i = path.rfind("/")
    return clean(path[: i + 1]) if i >= 0 else "."


def basename(path: str) -> str:
    """``filepath.Base``: the last element; trailing slashes ignored; ``""`` -> ``"."``,
    all slashes -> ``"/"``."""
    if path == "":
        return "."
    path = path.rstrip("/")
    if path == "":
        return "/"
    return path[path.rfind("/") + 1:]


def is_within(root: str, path: str) -> bool:
    """True if the cleaned absolute ``path`` is ``root`` or below it (a directory-boundary
    prefix test; the reference's plain string prefix test also accepts ``/dest2`` for ``/dest``)."""
    if root == "/":
        return path.startswith("/")
    return path == root or path.startswith(root + "/")
