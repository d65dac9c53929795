"""Which uid a container runs as (the image's USER), and volumes handed to it."""

from __future__ import annotations

import os

import pytest

from chalkd.runtime.image_user import ImageUserError, parse_user
from chalkd.store.db import Store
from chalkd.volumes.store import VolumeStore

pytestmark = pytest.mark.timeout(30)

PASSWD = "root:x:0:0:root:/root:/bin/bash\napp:x:1000:1001::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:\napp:x:1001:\n"


@pytest.mark.parametrize("user, want", [
    ("", (0, 0)), ("0", (0, 0)), ("root", (0, 0)), ("app", (1000, 1001)), ("1000", (1000, 1001)),
    ("1234", (1234, 0)), ("app:staff", (1000, 50)), ("1000:7", (1000, 7)), ("4242:4343", (4242, 4343)),
])
def test_user_forms_docker_accepts(user, want):
    assert parse_user(user, PASSWD, GROUP) == want


def test_unknown_names_are_refused_naming_them():
    with pytest.raises(ImageUserError, match="names user 'ghost', which is not in its /etc/passwd"):
        parse_user("ghost", PASSWD, GROUP)
    with pytest.raises(ImageUserError, match="names group 'ghosts', which is not in its /etc/group"):
        parse_user("app:ghosts", PASSWD, GROUP)


@pytest.fixture
def volumes(tmp_path):
    store = Store(tmp_path / "chalkd.db")
    store.open_sync()
    yield VolumeStore(tmp_path, store)
    store.db.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_a_volume_is_handed_to_the_container_uid_without_following_symlinks(volumes, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("host file")
    volumes.create("data")
    batch = volumes.begin_batch("data")
    batch.write("a/b/c.txt", b"x")
    batch.end_file()
    batch.commit()
    root = volumes.root("data")
    os.symlink(outside, root / "a" / "link")  # as a container could plant
    assert volumes.hand_to("data", 1000, 1001)
    for path in (root, root / "a", root / "a" / "b", root / "a" / "b" / "c.txt"):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (1000, 1001), path
    assert os.lstat(root / "a" / "link").st_uid == 1000
    assert os.stat(outside).st_uid == 0  # the symlink's target is untouched
    assert not volumes.hand_to("data", 1000, 1001)  # already its owner: nothing walked
    assert volumes.hand_to("data", 0, 0) and os.stat(root / "a" / "b" / "c.txt").st_uid == 0
