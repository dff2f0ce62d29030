"""From image keys back to files, for whoever holds the project key: ``python -m sslflow.data.image_keys SOURCE
KEY...``; ``python -m sslflow.data.image_keys SOURCE --unlisted`` lists the image files its metadata.csv does not list.

The dataset, its summary and every message after ingest name an image by its key ("file-" + HMAC of its path
in the source, "#frame=<n>" for a frame: sslflow/data/manifest.py), never by its path. To find the files
behind the keys that a validation failure, a quarantine or a label conflict names, list the source again
and hash each path with the same key (nothing is decoded; only the listing is read).
"""

from __future__ import annotations

import sys

from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.sources import open_source
from sslflow.errors import printable


def paths_of_keys(source: str, keys: list[str], pseudonyms: Pseudonyms | None = None) -> dict[str, str | None]:
    """{key: the path in ``source`` it names, or None when no file of the source has it} (frames keep their suffix)."""
    pseudonyms = pseudonyms or Pseudonyms()
    opened = open_source(source)
    paths = [record.source_path for _, record, _ in opened.records()] + list(opened.unlisted())
    by_key = {pseudonyms.pseudonym("file", path): path for path in paths}
    found = {}
    for key in keys:
        base, frame = key.split("#", 1) if "#" in key else (key, "")
        found[key] = by_key[base] + (f"#{frame}" if frame else "") if base in by_key else None
    return found


if __name__ == "__main__":
    if sys.argv[2:] == ["--unlisted"]:
        for path in open_source(sys.argv[1]).unlisted():
            print(printable(path))
        sys.exit(0)
    for image_key, path in paths_of_keys(sys.argv[1], sys.argv[2:]).items():
        print(f"{printable(image_key)}\t{printable(path) if path is not None else '(not in this source)'}")
