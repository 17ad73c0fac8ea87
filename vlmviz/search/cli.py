"""`python -m vlmviz index FOLDER` and `python -m vlmviz search INDEX "query"`: the library search verbs."""
from __future__ import annotations

import json
import sys


def progress_bar():
    """(progress, close) for SearchIndex.update: one tqdm bar per stage (checking files, embedding images)."""
    from tqdm.auto import tqdm

    state = {}

    def progress(done, total, what):
        bar = state.get(what)
        if bar is None:
            for old in state.values():
                old.close()
            state.clear()
            bar = state[what] = tqdm(total=total, desc=what, unit="img", file=sys.stderr)
        bar.n = done
        bar.refresh()

    def close():
        for bar in state.values():
            bar.close()

    return progress, close


def _extra(fn):
    """A missing optional extra (Ray, LanceDB) is the user's to install: one line, exit 2, as for bad input."""
    def wrapper(args):
        try:
            return fn(args)
        except ImportError as err:
            raise ValueError(str(err)) from None

    return wrapper


@_extra
def cmd_index(args):
    from .index import SearchIndex

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    index = SearchIndex.create(args.folder, args.index, args.connector)
    progress, close = progress_bar()
    try:
        report = index.update(batch_size=args.batch_size, progress=None if args.quiet else progress,
                              engine=args.engine)
    except KeyboardInterrupt:
        close()
        print("interrupted: everything embedded so far is saved; run the same command to go on", file=sys.stderr)
        raise SystemExit(130)
    close()
    if args.compact:
        report["reclaimed_rows"] = index.store.compact()
    if args.ann == "lance":
        report["lance"] = index.sync_ann()
    for line in report["repaired"]:
        print(f"repaired: {line} (its files were embedded again)", file=sys.stderr)
    for path, reason in sorted(report["bad"].items()):
        print(f"skipped {reason}" if reason.startswith(path) else f"skipped {path}: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps({**report, "index": str(index.store.root)}, indent=1))
    else:
        print(f"{index.store.root}: {report['files']} files, {report['vectors']} vectors "
              f"({report['embedded']} embedded now, {report['renamed_or_copied']} renamed or copied, "
              f"{report['unchanged']} unchanged, {report['removed']} removed, {len(report['bad'])} skipped)")


@_extra
def cmd_search(args):
    from .index import SearchIndex

    index = SearchIndex.open(args.index, connector=args.connector)
    hits = index.search(args.query, k=args.k, min_score=args.min_score, folder=args.folder, after=args.after,
                        before=args.before, ann=args.ann)
    if args.json:
        print(json.dumps([{"path": h.path, "score": round(h.score, 6)} for h in hits]))
    else:
        for h in hits:
            print(f"{h.score:.4f}\t{h.path}")


def add_parsers(sub) -> None:
    p = sub.add_parser("index", help="index a folder of images (recursively) for text search through a connector; "
                                     "incremental and resumable")
    p.add_argument("folder", help="the image library: jpg, png, webp, gif, bmp, tiff, in any subfolder")
    p.add_argument("--connector", default=None,
                   help="'photo' (the built-in photo connector, default), 'scenes', a checkpoint file, or "
                        "vlm:FOLDER (a saved VLM's own tower and connector)")
    p.add_argument("--index", default=None, help="index folder (default: under $VLMVIZ_CACHE/indexes, never inside "
                                                 "the library)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="ray: embed on Ray Data (a running cluster after ray.init, else local worker processes)")
    p.add_argument("--ann", choices=("none", "lance"), default="none",
                   help="lance: also keep a LanceDB IVF-PQ mirror for approximate search of very large libraries")
    p.add_argument("--compact", action="store_true", help="afterwards, rewrite the shards without removed files' rows")
    p.add_argument("--json", action="store_true", help="print the update report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="query an index: words, an image path, or '\"a\" - \"b\" + 0.5 * img.jpg'")
    p.add_argument("index", help="an index folder, or a library folder indexed at the default place")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=20, help="how many results (default 20)")
    p.add_argument("--min-score", type=float, help="only results with at least this cosine")
    p.add_argument("--folder", help="only files under this subfolder of the library")
    p.add_argument("--after", metavar="YYYY-MM-DD", help="only files modified on or after this day")
    p.add_argument("--before", metavar="YYYY-MM-DD", help="only files modified before this day")
    p.add_argument("--connector", help="refuse unless the index was built with this connector")
    p.add_argument("--ann", action="store_true", help="approximate, through the LanceDB mirror (index --ann lance)")
    p.add_argument("--json", action="store_true", help="a JSON list of {path, score}")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=cmd_search)
