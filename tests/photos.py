"""Real photographs for ILSVRC-shaped test corpora (Debian's wallpaper packages), or a skip."""

import pytest

from tasks.imagenet import ilsvrc_sample


def sample_photos(max_side: int = 1200) -> list:
    found = ilsvrc_sample.find_photos()
    if not found:
        pytest.skip(f"needs the photos of `apt-get install {ilsvrc_sample.PHOTO_PACKAGE}`")
    return ilsvrc_sample.load_photos(found, max_side=max_side)
