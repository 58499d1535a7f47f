"""imageserver.names: image names and NAME@N references, checked where they
enter (command line, IMAGENAME=, the store's directory)."""

from __future__ import annotations

import pytest

from imageserver.names import ImageRef, check_name, is_name, parse_version
from sysclone.errors import ConfigError


@pytest.mark.parametrize("text", ["web", "web@1", "web@12", "rhel_9+x", "a.b-c", "A" * 64])
def test_valid_references(text):
    ref = ImageRef.parse(text)
    assert str(ref) == text
    assert ref.version == (int(text.split("@")[1]) if "@" in text else None)


@pytest.mark.parametrize("text", ["a/b", "..", "a..b", "../etc", "-rf", "@1", "@", ".hidden",
                                  "a b", "web\n", "", "A" * 65, "wéb"])
def test_bad_names(text):
    with pytest.raises(ConfigError, match=r"image name .* is not valid") as e:
        ImageRef.parse(text)
    assert e.value.hint and "at most 64" in e.value.hint
    assert not is_name(text)


@pytest.mark.parametrize("text", ["web@", "web@0", "web@01", "web@-1", "web@x", "web@1@2",
                                  "web@1.5", "web@١", "web@99999999999"])
def test_bad_versions(text):
    with pytest.raises(ConfigError, match=r"image version .* is not valid"):
        ImageRef.parse(text)


def test_check_name_keeps_the_old_contract():
    assert check_name("deb12") == "deb12"
    with pytest.raises(ConfigError, match=r"'a\.\.b' is not valid"):
        check_name("a..b")
    assert parse_version("7") == 7
