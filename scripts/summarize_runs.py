"""Print a markdown table of training runs from their metrics.json files (recipe, MCC, time)."""

import json
import statistics
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    print("| run | recipe | best epoch | dev MCC | in-domain | out-of-domain | accuracy | wall time | samples/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    mccs = []
    for p in paths:
        m = json.loads(Path(p).read_text())
        c, b = m["config"], m["best"]
        best_row = max(m["epochs"], key=lambda r: r["mcc"])
        recipe = (f"lr {c['learning_rate']:g}, {c['epochs']:g} ep, bs {c['batch_size']}, warmup {c['warmup_ratio']:g}, "
                  f"llrd {c['layer_decay']:g}, head x{c['head_lr_multiplier']:g}"
                  + (", pooler re-init" if c.get("reinit_pooler") else "")
                  + (", balanced class weights" if c.get("class_weights") == "balanced" else "")
                  + (f", {c['evals_per_epoch']} evals/ep" if c.get("evals_per_epoch", 1) > 1 else "")
                  + f", seed {c['seed']}")
        print(f"| {Path(p).parent.name} | {recipe} | {round(best_row['epoch'], 2):g} | {b['mcc']:.3f} | {b['mcc_in_domain']:.3f} | "
              f"{b['mcc_out_domain']:.3f} | {b['accuracy']:.3f} | {m['wall_time_s'] / 60:.1f} min{' since --resume' if m.get('resumed_from') else ''} | {m['train_samples_per_second']:.0f} |")
        mccs.append(b["mcc"])
    if len(mccs) > 1:
        print(f"\nmean dev MCC {statistics.mean(mccs):.3f} ± {statistics.stdev(mccs):.3f} (sd over {len(mccs)} runs; "
              f"min {min(mccs):.3f}, max {max(mccs):.3f})")


if __name__ == "__main__":
    main(sys.argv[1:])
