"""`make data-mlearn`: the mlearn JSON pair of an element → the bundled variable-size npz (data/README.md)."""
from __future__ import annotations

import argparse

from dcnn.atomistic.io import save_atoms_npz
from dcnn.atomistic.mlearn import CITATION, convert


def main(argv=None) -> None:
    """`python -m dcnn.atomistic.convert_mlearn TRAINING.json TEST.json OUT.npz --name NAME` (what `make data` runs)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("training")
    parser.add_argument("test")
    parser.add_argument("out")
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    ds = convert(args.training, args.test, args.name)
    save_atoms_npz(args.out, ds, extra={"citation": CITATION})
    print(f"{args.out}: {len(ds)} frames ({int(ds.test_mask.sum())} test), {ds.total_atoms} atoms, "
          f"groups {sorted(set(ds.groups.tolist()))}")


if __name__ == "__main__":
    main()
