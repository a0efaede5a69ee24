"""The server's state directory (`--state-dir`): uploaded files and batch jobs, kept across restarts."""

import shutil
import tempfile
from pathlib import Path


class StateDir:
    """Made on first use. Without a path (tests, an app built in code) it is a temporary directory,
    removed at shutdown."""

    def __init__(self, path: str | Path | None):
        self._path = None if path is None else Path(path).expanduser()
        self.is_temporary = path is None

    def sub(self, name: str) -> Path:
        if self._path is None:
            self._path = Path(tempfile.mkdtemp(prefix="polyhead-state-"))
        folder = self._path / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def cleanup(self) -> None:
        if self.is_temporary and self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None
