#!/usr/bin/env python3
"""Fetch MovieLens 100K and write it as a Taobao-format event file for `recsys eval`.

MovieLens 100K (GroupLens, 943 users, 1,682 movies, 100,000 ratings from
1997-09 to 1998-04) is the second data set `recsys eval` is checked on, of
another domain than the Taobao samples. Its terms do not allow
redistribution, so it is not in the repository: this script takes it from the
copy that RecBole ships in its wheel on PyPI (recbole 1.2.1,
recbole/dataset_example/ml-100k), which this machine can reach.

Conversion, chosen once and not tuned: a rating of 4 or 5 is a purchase (a
target of the evaluation), a lower one a view; the category is the movie's
first genre; the time is the rating's Unix time in seconds. Lines are written
in time order (ties in file order).

    python3 scripts/movielens100k.py /tmp/ml100k.csv.gz
    bin/recsys eval --format taobao /tmp/ml100k.csv.gz
"""

import gzip
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "recbole==1.2.1"
BASE = "recbole/dataset_example/ml-100k/"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, WHEEL], check=True)
        wheel = next(Path(tmp).glob("recbole-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            items = z.read(BASE + "ml-100k.item").decode("latin-1")
            inter = z.read(BASE + "ml-100k.inter").decode("utf-8")
    genre = {}
    for line in items.splitlines()[1:]:
        f = line.split("\t")
        classes = f[3].split() if len(f) > 3 else []
        genre[f[0]] = classes[0] if classes else "none"
    rows = []
    for n, line in enumerate(inter.splitlines()[1:]):
        user, item, rating, ts = line.split("\t")
        behavior = "buy" if float(rating) >= 4 else "pv"
        rows.append((int(float(ts)), n, user, item, behavior))
    rows.sort()
    buf = io.StringIO()
    for ts, _, user, item, behavior in rows:
        buf.write(f"{user},{item},{genre.get(item, 'none')},{behavior},{ts}\n")
    with gzip.open(out, "wt") as f:
        f.write(buf.getvalue())
    buys = sum(1 for r in rows if r[4] == "buy")
    print(f"{out}: {len(rows)} events ({buys} purchases), {len(set(r[2] for r in rows))} users, {len(genre)} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
