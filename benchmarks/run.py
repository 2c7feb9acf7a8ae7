"""The schema benchmark, runnable without installing: ``python benchmarks/run.py`` = ``extract bench``.

    python benchmarks/run.py --suite benchmarks/suite.toml --sample 3 --serve --out benchmarks/results/DATE
    python benchmarks/run.py --data ../shared/data/usaddress/dev.jsonl --schema schemas.address:Address \\
        --policy local --policy chain --sample 20 --out /tmp/bench

Every argument is ``extract bench``'s (see ``extract bench --help``); ``module:Class`` schemas
are imported from the current directory and ``PYTHONPATH``, so your own schemas bench too.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from extract.front.cli import app  # noqa: E402

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "bench", *sys.argv[1:]]
    app()
