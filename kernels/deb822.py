"""Reading Debian's RFC822-like control format (deb822).

apt's `.sources` files, the archive's InRelease and its Packages indexes are
all stanzas of `Field: value` lines separated by blank lines.  One parser
serves all three; `fields=` lets the Packages reader (tens of thousands of
stanzas) skip the fields it does not need without building them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator


class Stanza(dict[str, str]):
    """One paragraph.  Field names are case-insensitive in deb822, so they are
    stored lowercased; `line` is where the stanza starts (1-based) so that
    errors can point at it."""

    line: int = 0


def parse(
    text: str, *, fields: Collection[str] | None = None, comments: bool = True
) -> Iterator[Stanza]:
    """Yield the stanzas of `text`.

    Multi-line values keep their line breaks: the first line is what follows
    the colon (often empty, as in `SHA256:` or an inline `Signed-By:` key) and
    each continuation line loses its one leading space; a lone ` .` stands for
    an empty line.  `#` lines are comments where the format allows them
    (sources files); Packages and Release files never contain them.
    `fields` (lowercase names) keeps only those fields.
    """
    wanted = None if fields is None else frozenset(f.lower() for f in fields)
    stanza = Stanza()
    key: str | None = None  # the field continuation lines belong to
    parts: list[str] = []
    skipping = False  # inside a field that `fields` leaves out

    for number, raw in enumerate(text.splitlines(), 1):
        if comments and raw.startswith("#"):
            continue
        if raw[:1] in (" ", "\t") and raw.strip():
            if key is not None:
                body = raw[1:]
                parts.append("" if body.strip() == "." else body)
            elif not skipping:
                raise ValueError(f"line {number}: continuation line without a field")
            continue
        if key is not None:
            stanza[key] = "\n".join(parts)
            key = None
        skipping = False
        if not raw.strip():
            if stanza:
                yield stanza
            stanza = Stanza()
            continue
        if not stanza.line:
            stanza.line = number
        name, colon, value = raw.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"line {number}: expected 'Field: value', got {raw.strip()!r}")
        name = name.strip().lower()
        if wanted is not None and name not in wanted:
            skipping = True
            continue
        key, parts = name, [value.strip()]
    if key is not None:
        stanza[key] = "\n".join(parts)
    if stanza:
        yield stanza
