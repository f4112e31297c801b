"""Layer tars for the engine tests."""
from __future__ import annotations

import io
import tarfile


def tar_file(path: str, members) -> str:
    """An uncompressed layer tar at ``path`` of ``(name, bytes)`` files and ``(name, None)`` dirs."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return path
