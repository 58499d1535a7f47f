"""A minimal XML tree that remembers line numbers, read safely.

xml.etree does not keep line numbers; expat (its parser) does.  Layouts
come from the image server and may be written by anyone who can put a file
there, so the reader accepts plain elements, attributes, text and comments
only.  The one DOCTYPE allowed is the line SystemImager's own files carry,
`<!DOCTYPE config SYSTEM "disk-layout.dtd">`: no internal subset, no
public id, a SystemImager schema name; it declares nothing and is never
fetched.  Any other DOCTYPE and every entity declaration is refused
outright rather than trusted to expat's defaults (expansion bombs,
external entities).
"""

from __future__ import annotations

import xml.parsers.expat
from dataclasses import dataclass, field

from sysclone.errors import ConfigError

HINT = "disks-layout files are XML; see systemimager.disks-layout(7)"
SI_SCHEMAS = ("disk-layout.dtd", "disks-layout.dtd", "disk-layout.xsd", "disks-layout.xsd")


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    line: int
    children: list[Node] = field(default_factory=list)
    text: str = ""


class _Refused(Exception):
    def __init__(self, line: int, message: str, hint: str) -> None:
        super().__init__(message)
        self.line, self.message, self.hint = line, message, hint


def read_tree(data: str | bytes, source: str, what: str = "a disk layout",
              hint: str = HINT) -> Node:
    """The document's root element; ConfigError naming `source` and the line
    for anything that is not well-formed or not allowed.  `what` and `hint`
    say what kind of file it is (SystemImager's cluster.xml is read the
    same way)."""
    parser = xml.parsers.expat.ParserCreate()
    stack: list[Node] = []
    roots: list[Node] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        node = Node(tag, attrs, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def end(tag: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text += data

    def doctype(name: str, sysid: str | None, pubid: str | None, internal: bool) -> None:
        if name == "config" and sysid in SI_SCHEMAS and not pubid and not internal:
            return  # SystemImager's own line: names its schema, declares nothing
        raise _Refused(parser.CurrentLineNumber,
                       f"a <!DOCTYPE {name}> declaration is not allowed in {what}",
                       "delete the DOCTYPE line: sysclone checks the layout itself, and a "
                       "DOCTYPE can declare entities that expand or fetch content")

    def entity(name: str, *args: object) -> None:
        raise _Refused(parser.CurrentLineNumber,
                       f"entity declaration {name!r} is not allowed in {what}",
                       "write the values out; SystemImager's files use no entities")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    # An undeclared entity reference (&x;) is an error, not text to skip.
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except _Refused as r:
        raise ConfigError(f"{source}:{r.line}: {r.message}", hint=r.hint) from None
    except xml.parsers.expat.ExpatError as exc:
        reason = xml.parsers.expat.ErrorString(exc.code)
        raise ConfigError(f"{source}:{exc.lineno}: not well-formed XML: {reason}",
                          hint=hint) from None
    return roots[0]
