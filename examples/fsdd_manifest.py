"""Print a ``path,label,split`` manifest of the Free Spoken Digit Dataset with its official split
(file index 0-4 of every speaker and digit is test, 5-49 train); the files stay where they are.

    python examples/fsdd_manifest.py ../shared/data/fsdd > fsdd.csv
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/fsdd").resolve()
    print("path,label,split")
    for f in sorted(root.glob("*/*.wav")):
        index = int(f.stem.rsplit("_", 1)[1])
        print(f"{f},{f.parent.name},{'test' if index < 5 else 'train'}")


if __name__ == "__main__":
    main()
