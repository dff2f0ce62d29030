"""From image keys back to files, for whoever holds the project key: ``python -m sslflow.data.image_keys SOURCE KEY...``.

The dataset, its summary and every message after ingest name an image by its key ("file-" + HMAC of its path
in the source, "#frame=<n>" for a frame: sslflow/data/manifest.py), never by its path. To find the files
behind the keys that a validation failure, a quarantine or a label conflict names, list the source again
and hash each path with the same key (nothing is decoded; only the listing is read).
"""

from __future__ import annotations

import sys

from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.sources import open_source


def paths_of_keys(source: str, keys: list[str], pseudonyms: Pseudonyms | None = None) -> dict[str, str | None]:
    """{key: the path in ``source`` it names, or None when no file of the source has it} (frames keep their suffix)."""
    pseudonyms = pseudonyms or Pseudonyms()
    by_key = {pseudonyms.pseudonym("file", record.source_path): record.source_path for _, record, _ in open_source(source).records()}
    found = {}
    for key in keys:
        base, frame = key.split("#", 1) if "#" in key else (key, "")
        found[key] = by_key[base] + (f"#{frame}" if frame else "") if base in by_key else None
    return found


if __name__ == "__main__":
    for image_key, path in paths_of_keys(sys.argv[1], sys.argv[2:]).items():
        print(f"{image_key}\t{path if path is not None else '(not in this source)'}")
