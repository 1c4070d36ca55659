"""formats: the one table every other list of formats is read from."""
from __future__ import annotations

from pipeline import config, formats, imageio, rules


def test_every_extension_names_one_format():
    extensions = [ext for f in formats.FORMATS for ext in f.extensions]
    assert len(extensions) == len(set(extensions))
    assert all(ext == ext.lower() and ext.startswith(".") for ext in extensions)


def test_the_other_lists_are_read_from_the_table():
    assert config.FORMATS == formats.CHANNEL_FORMATS and set(config.EXTENSIONS) == set(config.FORMATS)
    for f in formats.FORMATS:
        if f.channel:
            assert config.ChannelConfig(name="t", path=None, format=f.channel).extension == f.channel_extension
    assert rules.DEFAULT_EXTENSIONS == list(formats.INPUT_EXTENSIONS) == list(imageio.INPUT_EXTENSIONS)
    refused = {f.kind for f in formats.REFUSED}
    assert not refused & set(formats.PILLOW_FORMATS) and not refused & {f.kind for f in formats.ACCEPTED}


def test_sniff_tells_refused_formats_by_their_magic():
    for f in formats.REFUSED:
        for magic in f.magic:
            assert formats.sniff((b"  " if f.text else b"") + magic + b"\x00" * 16) == f"refused:{f.kind}"
