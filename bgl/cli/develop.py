"""`bgl develop PHOTO --checkpoint CKPT`: a camera RAW file developed by a trained block.

``--compare [PATH]`` also writes bgl's rendering beside LibRaw's development of the same file
(bgl left, LibRaw right, same exposure) and prints per-channel mean ratios and the grey SSIM.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table

from bgl.cli.args import console, error
from bgl.raw.colour import RAW_SPACES


def _ratio(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"the ratio must be positive, got {value}")
    return value


def _tile(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def add_develop_command(subparsers: Any) -> argparse.ArgumentParser:
    """``bgl develop PHOTO --checkpoint GB.pt [--ratio R] -o out.png``."""
    p = subparsers.add_parser(
        "develop",
        help="develop a camera RAW file (ARW, DNG, NEF, CR2, ...) with a trained generative block",
        description="Runs the generative block (and optionally the enhancement network) on a "
        "full-resolution RAW file, tiled with overlap so any frame fits in memory.",
    )
    p.add_argument("photo", help="camera RAW file LibRaw can read (Bayer sensors)")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="training checkpoint (checkpoint.pt) or a GenerativeBlock state dict",
    )
    p.add_argument("-o", "--output", default=None, help="PNG to write (default: PHOTO.png)")
    p.add_argument(
        "--ratio",
        type=_ratio,
        default="auto",
        help="exposure amplification, as SID's ratio (default: auto, mean linear RAW -> 0.1)",
    )
    p.add_argument("--width", type=int, default=None, help="generator width (checked vs weights)")
    p.add_argument("--enhance", action="store_true", help="also run the enhancement network G")
    p.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth")
    p.add_argument(
        "--tile",
        type=_tile,
        default="auto",
        help="tile side in packed pixels (default auto: the block's training crop)",
    )
    p.add_argument(
        "--overlap", type=int, default=None, help="tile overlap in packed pixels (default: auto)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--raw-space",
        choices=RAW_SPACES,
        default=None,
        help="F's input space (default: the checkpoint's data.raw_space; camera for a bare "
        "state dict)",
    )
    p.add_argument(
        "--compare",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="also write bgl's rendering beside LibRaw's development at the same exposure "
        "(default PATH: OUTPUT-vs-libraw.png) and print mean ratios and grey SSIM",
    )
    p.set_defaults(func=develop_command)
    return p


def develop_command(args: argparse.Namespace) -> int:
    """Develop one photo and print what was done."""
    from bgl.develop import develop_file
    from bgl.raw.read import RawReadError

    output = args.output or str(Path(args.photo).with_suffix(".png"))
    compare = args.compare
    if compare == "":
        compare = str(Path(output).with_name(f"{Path(output).stem}-vs-libraw.png"))
    if compare is not None and Path(compare).resolve() == Path(output).resolve():
        error(f"--compare {compare}: the same file as the output; give another path")
        return 2
    try:
        result = develop_file(
            args.photo,
            args.checkpoint,
            output,
            ratio=args.ratio,
            width=args.width,
            enhance=args.enhance,
            bits=args.bits,
            tile=args.tile,
            overlap=args.overlap,
            device=args.device,
            raw_space=args.raw_space,
            compare=compare,
        )
    except (RawReadError, FileNotFoundError, ValueError) as exc:
        error(str(exc))
        return 2
    table = Table(title=f"bgl develop {Path(args.photo).name}")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    table.add_row("output", result.output)
    table.add_row("size", f"{result.output_shape[1]} x {result.output_shape[0]}, {result.bits} bit")
    table.add_row("CFA", result.pattern)
    table.add_row("ratio", f"{result.ratio:.1f}")
    table.add_row("F's input", f"{result.raw_space} RAW")
    table.add_row("generator width", str(result.width))
    table.add_row("enhancement network", "yes" if result.enhanced else "no")
    if result.compare is not None and result.mean_ratio is not None:
        table.add_row("comparison (bgl | LibRaw)", result.compare)
        r, g, b = result.mean_ratio
        table.add_row("mean bgl / LibRaw (R, G, B)", f"{r:.3f}, {g:.3f}, {b:.3f}")
        table.add_row("grey SSIM vs LibRaw", f"{result.ssim_grey:.3f}")
    table.add_row("time (s)", f"{result.seconds:.1f}")
    console.print(table)
    return 0
