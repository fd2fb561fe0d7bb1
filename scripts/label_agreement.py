"""How consistently does a catalog label the same photo? A ceiling no captioner can pass.

Usage: python scripts/label_agreement.py CATALOG [--image-col image] [--caption-col caption]

Groups the rows whose image files are byte-identical. A captioner gives one caption per
photo, so within a group it can match at most the most common label: the printed
"ceiling" is that best possible accuracy over the grouped rows, per attribute (the
baseColour / gender columns when present, the title's last word as the article, and
the whole title).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pandas as pd

from catalog_captioner import images
from catalog_captioner.text import tokenize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--image-col", default="image")
    parser.add_argument("--caption-col", default="caption")
    args = parser.parse_args()
    frame = pd.read_csv(args.catalog, dtype=str, keep_default_na=False)
    root = args.catalog.resolve().parent
    frame["digest"] = [hashlib.sha256(images.resolve(cell, root).read_bytes()).hexdigest()
                       for cell in frame[args.image_col]]
    frame["article"] = [(tokenize(c) or [""])[-1] for c in frame[args.caption_col]]
    frame["title"] = [" ".join(tokenize(c)) for c in frame[args.caption_col]]
    shared = frame[frame.groupby("digest")["digest"].transform("size") > 1]
    print(f"{len(shared)} of {len(frame)} rows share their photo with another row "
          f"({shared['digest'].nunique()} distinct photos)")
    for column in ("gender", "baseColour", "article", "title"):
        if column not in frame.columns:
            continue
        groups = shared.groupby("digest")[column]
        ceiling = groups.agg(lambda values: values.value_counts().iloc[0]).sum() / len(shared)
        disagree = int((groups.nunique() > 1).sum())
        print(f"{column:>10}: {disagree} photos carry two or more labels; best possible accuracy on these rows "
              f"{ceiling:.3f}")


if __name__ == "__main__":
    main()
