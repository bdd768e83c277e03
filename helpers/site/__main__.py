"""python -m helpers.site [--out DIR] [-v]: build the static site; serve it with `python -m http.server -d DIR`."""
import argparse

from helpers.site.build import ROOT, build, site_bytes
from helpers.viz import explorer_data


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m helpers.site", description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "_build" / "site"), help="output folder (default _build/site)")
    ap.add_argument("--models", help="explorer models, comma-separated (default: all that load): "
                    + ", ".join(explorer_data.MODELS))
    ap.add_argument("-v", "--verbose", action="store_true", help="show Sphinx's progress")
    a = ap.parse_args(argv)
    models = a.models.split(",") if a.models else None
    if models and (bad := [m for m in models if m not in explorer_data.MODELS]):
        ap.error(f"--models: no explorer model {', '.join(bad)}; pick from {', '.join(explorer_data.MODELS)}")
    out, secs = build(a.out, quiet=not a.verbose, models=models)
    print(f"built {out} in {secs:.1f} s ({site_bytes(out) / 1e6:.1f} MB); "
          f"serve it: python -m http.server -d {out}")


if __name__ == "__main__":
    main()
