"""A lab's file that declares more pixels than a capture may have is refused from its header, before decoding."""

import resource

import pytest

from alloynet.captures.importing.frames import SourceImageError, read_source_image
from tests.helpers.faults import png_bomb, tiff_declaring


@pytest.mark.parametrize("make", [lambda: png_bomb(12000), lambda: tiff_declaring(20000)], ids=["png", "tiff"])
def test_bombs_are_refused_from_the_header(make):
    data = make()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(SourceImageError, match=r"image declares 1x\d+x\d+ = \d+ pixels"):
        read_source_image(data)
    # decoding either would need >= 288 MB; the header check allocates nothing of the kind
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024
