"""`agman compare`: several checkpoints' indexes of one catalog side by side for one query (Fig. 6)."""
from __future__ import annotations

import argparse
from pathlib import Path

from agman.cli import CLIError
from agman.cli.retrieval import add_index_location, add_model_options, add_query_arguments, add_search_tuning, \
    add_verify_option, k_value, open_retriever
from agman.cli.search import grid_results, query_image, run_query


def register(subparsers) -> None:
    cmp_ = subparsers.add_parser(
        "compare",
        help="side-by-side top-k of several checkpoints' indexes of one catalog for one query (Fig. 6)",
        description="One row per --index: the same query ranked by each index's checkpoint.  The indexes must "
        "hold the same catalog (the same item ids); indexes of different catalogs are refused.",
    )
    add_index_location(cmp_, repeat=True)
    cmp_.add_argument("--name", action="append", help="row label per --index (default: model name + folder)")
    add_query_arguments(cmp_)
    cmp_.add_argument("--k", type=k_value, default=5, help="results per row (default 5)")
    cmp_.add_argument("--exclude-self", action="store_true")
    cmp_.add_argument("--annotated-only", action="store_true")
    cmp_.add_argument("--out", required=True, help="PNG to write")
    add_model_options(cmp_, checkpoint=False)  # each index embeds with its own checkpoint
    add_search_tuning(cmp_)
    add_verify_option(cmp_, "sample")
    cmp_.set_defaults(func=run_compare)


def same_catalog(first, other, first_dir: str, other_dir: str) -> None:
    """Refuse to compare an index that holds another catalog (another set of item ids) than the first."""
    a, b = first.item_ids(), other.item_ids()
    if a == b:
        return
    only_a, only_b = sorted(a - b), sorted(b - a)
    examples = "; ".join(f"{len(ids)} only in {where} (e.g. {ids[0]!r})"
                         for ids, where in ((only_a, first_dir), (only_b, other_dir)) if ids)
    raise CLIError(f"--index {other_dir} holds another catalog than --index {first_dir} ({len(b)} vs {len(a)} items: "
                   f"{examples}); compare ranks one catalog under several checkpoints: index the same images "
                   "with each checkpoint")


def run_compare(args: argparse.Namespace) -> int:
    from agman.render import ranking_comparison, save_picture

    if args.name and len(args.name) != len(args.index):
        raise CLIError(f"--name given {len(args.name)} times for {len(args.index)} --index folders")
    retrievers = [open_retriever(args, index_dir) for index_dir in args.index]
    for index_dir, retriever in zip(args.index[1:], retrievers[1:]):
        same_catalog(retrievers[0], retriever, args.index[0], index_dir)
    rows = {}
    image = None
    weights = None
    for i, (index_dir, retriever) in enumerate(zip(args.index, retrievers)):
        result = run_query(retriever, args, args.attribute, args.k)
        weights = result.weights
        name = args.name[i] if args.name else f"{retriever.info.model_name} ({Path(index_dir).name})"
        if name in rows:
            name = f"{name} #{i + 1}"
        rows[name] = grid_results(retriever, result)
        if image is None:
            image = query_image(retriever, args)
    title = ", ".join(f"{n}:{w:g}" for n, w in weights.items())
    save_picture(ranking_comparison(image, rows, title=title), args.out)
    print(f"comparison of {len(rows)} indexes: {args.out}")
    return 0
