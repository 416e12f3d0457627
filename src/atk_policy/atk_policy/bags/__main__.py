"""``python -m atk_policy.bags``: list bags, or recover bags a killed writer left unreadable.

    python -m atk_policy.bags inspect BAG...     storage, files and topics of each bag
    python -m atk_policy.bags reindex BAG...     rebuild a bag from its MCAP records (see bags.recovery)
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atk_policy.bags", description="List bags, or recover bags a killed writer left unreadable.")
    sub = parser.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="print the storage, files and topics of each bag")
    ins.add_argument("bags", nargs="+", help="bag folders, .mcap or .db3 files")
    rei = sub.add_parser("reindex", help="rebuild a bag whose writer was killed (no metadata.yaml, MCAP "
                                         "without summary) from the complete records of its MCAP file")
    rei.add_argument("bags", nargs="+", help="bag folders")
    rei.add_argument("--force", action="store_true", help="rewrite a bag even when it reads as it is")
    args = parser.parse_args(argv)

    from .common import BagError

    if args.command == "reindex":
        from .recovery import main_reindex

        return main_reindex(args.bags, force=args.force)
    from .reader import inspect_bag

    status = 0
    for bag in args.bags:
        try:
            info = inspect_bag(bag)
        except BagError as exc:
            print(f"inspect: error: {exc}", file=sys.stderr)
            status = 2
            continue
        print(f"{info.path}: {info.storage}, files {', '.join(info.files)}, {info.message_count} messages, "
              f"{info.duration_ns / 1e9:.3f} s\n  {info.describe_topics()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
