"""`agman search`: the catalog items nearest to a query image or item, as a table or JSON."""
from __future__ import annotations

import argparse
import json

from agman.cli.retrieval import (
    DEFAULT_K,
    MAX_K,
    add_index_location,
    add_model_options,
    add_query_arguments,
    add_search_tuning,
    add_verify_option,
    k_value,
    open_retriever,
)


def register(subparsers) -> None:
    search = subparsers.add_parser(
        "search",
        help="items with the same attribute value(s) as a query image or catalog item",
        description="Rank catalog items by (weighted) attribute similarity to the query and print them.",
    )
    add_index_location(search)
    add_query_arguments(search)
    search.add_argument(
        "--filter", metavar="EXPR",
        help='only items matching this expression over metadata and labels, e.g. \'category == "dress" and '
        "price < 50' (docs/retrieval.md: Filters)",
    )
    search.add_argument("--k", type=k_value, default=DEFAULT_K, help=f"results (1..{MAX_K}, default {DEFAULT_K})")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--exclude-self", action="store_true", help="leave the query item itself out of the results")
    search.add_argument(
        "--annotated-only",
        action="store_true",
        help="rank only items annotated with every queried attribute (as the evaluation does)",
    )
    search.add_argument("--grid", metavar="PNG", help="also save the query + top-k grid picture (Fig. 5)")
    add_model_options(search)
    add_search_tuning(search)
    add_verify_option(search, "sample")
    search.set_defaults(func=run_search)


def run_query(retriever, args: argparse.Namespace, attributes, k: int):
    flags = {"exclude_self": args.exclude_self, "annotated_only": args.annotated_only,
             "filter": getattr(args, "filter", None)}
    if args.item is not None:
        return retriever.search_item(retriever.find_item(args.item).id, attributes, k, **flags)
    return retriever.search(args.image, attributes, k, **flags)


def query_image(retriever, args: argparse.Namespace):
    """The query as a picture: the catalog item's image or the image file, loaded once."""
    from agman.retrieval.query import load_query_image

    return load_query_image(retriever.find_item(args.item).path if args.item is not None else args.image)


def grid_results(retriever, result):
    from agman.retrieval.query import load_query_image

    return [(load_query_image(h.path), h.score, h.correct) for h in result.hits]


def run_search(args: argparse.Namespace) -> int:
    retriever = open_retriever(args)
    result = run_query(retriever, args, args.attribute, args.k)
    if args.grid:
        from agman.render import result_grid, save_picture

        title = " + ".join(f"{w:g} x {n}" if w != 1 else n for n, w in result.weights.items())
        image = query_image(retriever, args)
        save_picture(result_grid(image, grid_results(retriever, result), title=title), args.grid)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1, ensure_ascii=False, allow_nan=False))  # strict JSON
        return 0
    print(format_table(result))
    if args.grid:
        print(f"grid: {args.grid}")
    return 0


def format_table(result) -> str:
    names = list(result.weights)
    lines = [result.describe_query()]
    cols = ["rank", "score"] + ([f"{n}" for n in names] if len(names) > 1 else []) + ["match", "id"]
    lines.append("  ".join(cols))
    for h in result.hits:
        mark = {True: "yes", False: "no", None: "-"}[h.correct]
        row = [f"{h.rank:>4}", f"{h.score:.4f}"]
        if len(names) > 1:
            row += [f"{h.scores[n]:.4f}" for n in names]
        row += [f"{mark:>5}", h.id]
        labels = ", ".join(f"{n}={h.labels[n]}" for n in names if n in h.labels)
        lines.append("  ".join(row) + (f"  [{labels}]" if labels else ""))
    if result.predicted:
        lines.append(f"predicted (vote of the {result.k} nearest labelled items in each attribute): "
                     + ", ".join(str(p) for p in result.predicted.values()))
    queried = [s for s in result.summary.values() if s.queried]
    if queried:
        lines.append("matches: " + "; ".join(str(s) for s in queried))
    return "\n".join(lines)


# --------------------------------------------------------------------------- pictures
