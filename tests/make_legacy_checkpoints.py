"""Write tests/fixtures/legacy_checkpoints/: one tiny checkpoint per learned method, saved by the code as it was
before the issue-28 redesign (commit 417f472), with the heatmap checksum that code gave on fixed images.

    git worktree add /tmp/pre-redesign 417f472
    PYTHONPATH=/tmp/pre-redesign/src python tests/make_legacy_checkpoints.py

tests/test_legacy_checkpoints.py loads each file with today's code and must get the same maps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from golden_runs import METHOD_RUNS, _checksum, warm_shared_models  # noqa: E402

OUT = Path(__file__).parent / "fixtures" / "legacy_checkpoints"
# golden run name -> (data section of the saved config: which task trained it)
LEARNED = {"mcb_attention": {"name": "multimnist"}, "mcb_attention_caption": {"name": "scenes", "image_size": 64},
           "dsve_loc": {"name": "scenes", "image_size": 64}, "multilevel": {"name": "scenes", "image_size": 64},
           "matchmap": {"name": "scenes", "image_size": 64}}


def main() -> None:
    import weakground
    from weakground.config import ExperimentConfig, from_dict
    from weakground.engine.checkpoint import save_checkpoint
    from weakground.methods import create_method

    try:
        from weakground.engine.pipeline import checkpoint_meta  # the code before the redesign
    except ImportError:
        from weakground.engine.checkpoint import checkpoint_meta
    print(f"writing with weakground from {weakground.__file__}")
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, data in LEARNED.items():
        run = METHOD_RUNS[name]
        spec = run.spec  # (method, backbone, class_names, params, batch, images, phrases)
        method, backbone, class_names, params, batch, images, phrases = spec
        config = from_dict(ExperimentConfig, {"name": f"legacy_{name}", "data": data, "backbone": backbone,
                                              "method": {"name": method, "params": params}})
        warm_shared_models()
        torch.manual_seed(0)
        model = create_method(method, config.backbone, class_names, params)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        model.train()
        loss = model.loss(batch())["total"]  # one step, so no weight is at its initial value
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.eval()
        if data["name"] == "scenes":  # what the old pipeline set on caption-trained models
            model.input_size = 64
        meta = {**checkpoint_meta(config, class_names), "stage": "train"}
        save_checkpoint(OUT / f"{name}.safetensors", model, meta)
        with torch.no_grad():
            expected[name] = _checksum(model.grounding_maps(images(), phrases))
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    for stale in OUT.glob("*.json"):
        if stale.name != "expected.json":
            stale.unlink()  # the human-readable metadata copies: the safetensors file holds the same
    print(f"wrote {len(expected)} checkpoints to {OUT}")


if __name__ == "__main__":
    main()
