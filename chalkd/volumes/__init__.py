"""Named volumes: directories under the daemon's home, mounted into containers
and reached through the ``Volumes`` API (see :mod:`chalkd.volumes.store`).

    volumes = VolumeStore(home, store)
    info, created = volumes.create("models")
    root = volumes.ensure("model-cache")      # what a mount binds: <home>/volumes/model-cache
"""

from chalkd.volumes.store import (
    Batch,
    FileEntry,
    InvalidVolumeName,
    InvalidVolumePath,
    VolumeFileNotFound,
    VolumeInfo,
    VolumeNotFound,
    VolumePathConflict,
    VolumeStore,
    VolumeStoreError,
)

__all__ = [
    "Batch",
    "FileEntry",
    "InvalidVolumeName",
    "InvalidVolumePath",
    "VolumeFileNotFound",
    "VolumeInfo",
    "VolumeNotFound",
    "VolumePathConflict",
    "VolumeStore",
    "VolumeStoreError",
]
