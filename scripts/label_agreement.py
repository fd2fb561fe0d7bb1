"""How consistently does a catalog label the same photo? A ceiling no captioner can pass.

Usage: python scripts/label_agreement.py CATALOG [--image-col COL] [--caption-col caption]

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

from catalog_captioner import catalog as catalogs
from catalog_captioner import images
from catalog_captioner.text import tokenize


def digest(cell, root: Path, options: images.LoadOptions) -> str:
    """sha256 of the image's bytes, fetched as `catcap run` would fetch them; '' when it cannot be read."""
    try:
        return hashlib.sha256(images.fetch(images.resolve(cell, root), options)).hexdigest()
    except images.ImageFailure:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--image-col", default=None, help="default: detected as by catcap run")
    parser.add_argument("--caption-col", default="caption")
    args = parser.parse_args()
    frame, image_col = catalogs.read_table(args.catalog, args.image_col)
    root, options = args.catalog.resolve().parent, images.LoadOptions()
    frame["digest"] = [digest(cell, root, options) for cell in frame[image_col]]
    unreadable = int((frame["digest"] == "").sum())
    if unreadable:
        print(f"{unreadable} rows skipped: their image could not be read")
        frame = frame[frame["digest"] != ""]
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
