"""`agman attention`: the model's attention heatmap for (image, attribute) (Fig. 7)."""
from __future__ import annotations

import argparse

from agman.cli import CLIError
from agman.cli.retrieval import add_index_location, add_model_options, add_query_arguments, add_verify_option, \
    open_retriever
from agman.cli.search import query_image


def register(subparsers) -> None:
    att = subparsers.add_parser(
        "attention",
        help="save the model's attention heatmap for (image, attribute) (Fig. 7)",
    )
    add_index_location(att)
    add_query_arguments(att, attention=True)
    att.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity 0..1 (default 0.5)")
    att.add_argument("--view", choices=("original", "model"), default="original",
                     help="original (default): the original image beside the map drawn on it at its own resolution "
                          "(what the model's crop cut away dimmed); model: the map over the model's input crop only")
    att.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
                     help="a region to draw on the original (pixels, x1/y1 exclusive), e.g. the attribute's "
                          "ground-truth box; repeatable")
    att.add_argument("--out", required=True, help="PNG to write")
    add_model_options(att)
    add_verify_option(att, "sample")
    att.set_defaults(func=run_attention)


def _box(text: str) -> tuple[float, ...]:
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not (0 <= box[0] < box[2] and 0 <= box[1] < box[3]):
        raise CLIError(f"--box {text!r}: expected X0,Y0,X1,Y1 with 0 <= X0 < X1 and 0 <= Y0 < Y1 (pixels)")
    return box


def run_attention(args: argparse.Namespace) -> int:
    from agman.render import save_picture

    if not 0 <= args.alpha <= 1:
        raise CLIError(f"--alpha must be in [0, 1], got {args.alpha}")
    boxes = [_box(text) for text in args.box]
    if boxes and args.view == "model":
        raise CLIError("--box draws on the original image: leave out --view model")
    retriever = open_retriever(args)
    terms = list(retriever.parse_attributes(args.attribute))
    weighted = [f"{t.name}:{t.weight:g}" for t in terms if t.weight != 1]
    if weighted:
        raise CLIError(f"-a {', '.join(weighted)}: an attention map has no weight; give the attribute name alone")
    image = query_image(retriever, args)
    if args.view == "model":
        overlays = [retriever.attention_image(image, t.index, alpha=args.alpha) for t in terms]
    else:
        overlays = [retriever.attention_beside_original(image, t.index, alpha=args.alpha, boxes=boxes) for t in terms]
    if overlays[0] is None:
        raise CLIError(f"model {retriever.info.model_name!r} has no spatial attention map")
    if len(overlays) == 1:
        picture = overlays[0]
    elif args.view == "model":
        from agman.render import captioned_strip

        picture = captioned_strip(overlays, [t.name for t in terms], "attention (red = high)")
    else:  # each is already the original beside its map, captioned with the attribute: one under the other
        from agman.render import stack_vertically

        picture = stack_vertically(overlays)
    save_picture(picture, args.out)
    print(f"attention of {', '.join(t.name for t in terms)}: {args.out}")
    return 0
