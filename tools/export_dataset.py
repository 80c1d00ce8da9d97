"""Exports a Hugging Face image classification dataset to the image-folder layout FusionBench-C
reads: OUT/<label>/<index>.png, labels zero-padded to one width so that folder order is label
order. Run on a machine that has the `datasets` package (and the dataset in its cache or
network access); copy OUT to $FUSION_BENCH_DATA/<dataset>/<split> on the machine that runs the
benchmark.

    python3 tools/export_dataset.py tanganke/sun397 test $FUSION_BENCH_DATA/sun397/test
    python3 tools/export_dataset.py "ufldl-stanford/svhn cropped_digits" test $FUSION_BENCH_DATA/svhn/test

The dataset's first image column and its label column (label, labels, fine_label) are used;
images are saved as PNG (lossless), so the pixels are those the dataset decodes to.
"""
import os
import sys

import datasets


def main():
    name, split, out = sys.argv[1], sys.argv[2], sys.argv[3]
    parts = name.split()
    ds = datasets.load_dataset(*parts, split=split)
    feats = ds.features
    image_col = next(k for k, v in feats.items() if isinstance(v, datasets.Image))
    label_col = next(k for k in ("label", "labels", "fine_label") if k in feats)
    classes = feats[label_col].num_classes if hasattr(feats[label_col], "num_classes") else \
        max(ds[label_col]) + 1
    width = len(str(classes - 1))
    for k in range(classes):  # every class, even one this split lacks
        os.makedirs(os.path.join(out, str(k).zfill(width)), exist_ok=True)
    for i, row in enumerate(ds):
        d = os.path.join(out, str(row[label_col]).zfill(width))
        os.makedirs(d, exist_ok=True)
        row[image_col].save(os.path.join(d, f"{i:06d}.png"))
    print(f"{name} {split}: {len(ds)} images, {classes} classes -> {out}")


if __name__ == "__main__":
    main()
