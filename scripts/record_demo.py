#!/usr/bin/env python3
"""Record the demo's expected run: `msrs demo` with its defaults (or the given options), computed afresh into
--work-dir, then its summary.json (settings, per-run seconds and sample counts, the calibration of this machine,
the table and the claim) copied to msrs/assets/demo_expected.json, which `msrs demo` scales by the speed it
measures to say how long it will take. Run it on an idle machine and say the load in docs/DEMO.md.

  python3 scripts/record_demo.py [--work-dir runs/demo-record] [demo options...]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    from msrs import demo, zoo

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "demo-record")
    p.add_argument("--dry-run", action="store_true", help="run and print, but do not write msrs/assets")
    args, rest = p.parse_known_args(argv)
    demo_parser = argparse.ArgumentParser()
    demo.add_arguments(demo_parser)
    demo_args = demo_parser.parse_args(["--out", str(args.work_dir), "--overwrite", "--no-progress", *rest])
    demo.run(demo_args)
    summary = json.loads((args.work_dir / "summary.json").read_text())
    summary["recorded_by"] = "python3 scripts/record_demo.py " + " ".join(rest)
    if args.dry_run:
        return 0
    target = zoo.asset_path(demo.EXPECTED_NAME)
    target.write_text(json.dumps(summary, indent=1) + "\n")
    shutil.copy2(args.work_dir / "certified_accuracy.png", args.work_dir / "recorded.png")
    print(f"recorded {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
