"""``weakground export``: write a grounder's image encoder + heatmap head as an ONNX graph for onnxruntime."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from weakground.errors import WeakgroundError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a grounder's image side to ONNX (run it with onnxruntime)",
                       description=textwrap.fill("Export the image encoder and heatmap head of a grounder to an ONNX graph. The "
                       "graph takes the prepared image [B, 3, H, W] (RGB in [0, 1] after the method's resize) and "
                       "one row per phrase [P, K] (bridge: text weights over the 1000 ImageNet classes; dsve_loc: "
                       "the unit text embeddings), computed in Python by weakground.export.OnnxGrounder with the "
                       "method's own text code, and returns the maps [B, P, h, w] of Predictor.heatmaps. Batch, "
                       "image size and phrase count are dynamic. A sidecar OUT.json describes the inputs. "
                       "Exportable: --method bridge, or a dsve_loc --checkpoint. Needs onnx and onnxruntime "
                       "(pip install 'weakground[export]'); see docs/export.md.", 100),
                       epilog="examples:\n  weakground export --method bridge --out bridge.onnx\n"
                       "  weakground export --checkpoint runs/dsve_loc_cpu/checkpoints/train_best.safetensors "
                       "--out dsve.onnx",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a trained method's .safetensors checkpoint (dsve_loc)")
    source.add_argument("--method", help="a method that needs no training, by name (bridge)")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write (OUT.json: its description)")
    p.add_argument("--image-size", type=int, help="bridge: the long side images are resized to, a multiple of 32 "
                   "(default: its method.params.image_size, 448)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from weakground.export import export_onnx, sidecar_path

    if args.out.suffix.lower() != ".onnx":
        raise WeakgroundError(f"--out {args.out}: give a file name ending in .onnx")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise WeakgroundError(f"--checkpoint {args.checkpoint}: no such file")
    if args.image_size is not None and args.image_size < 32:
        raise WeakgroundError(f"--image-size must be >= 32, got {args.image_size}")
    meta = export_onnx(args.checkpoint if args.checkpoint is not None else args.method, args.out, args.image_size)
    k = meta["inputs"]["phrases"]["shape"][1]
    print(f"{meta['method']} -> {args.out} (images [B, 3, H, W], phrases [P, {k}] -> maps [B, P, h, w]); "
          f"description: {sidecar_path(args.out)}")
    return 0
