"""Describe a HydraPicker model file: preset, heads, particle extent, threshold, training data.

Examples:
  hydra info                    # the shipped generic model
  hydra info runs/generic/model.pt --json
"""


def add_args(p):
    p.add_argument("model", nargs="?", default=None, help="model file (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="print the full metadata as JSON")


def main(args):
    import json

    from ..checkpoint import default_model_path, read_checkpoint
    from ..model import count_parameters
    from ..checkpoint import net_from_meta

    path = args.model or default_model_path()
    ck = read_checkpoint(path)
    meta = ck["meta"]
    if args.json:
        print(json.dumps({**meta, "path": str(path)}, indent=1, default=str))
        return 0
    net = net_from_meta(meta)
    tr = meta.get("training") or {}
    print(f"model:             {path}")
    print(f"format:            {meta.get('format')} (hydrapicker {meta.get('hydrapicker_version')})")
    print(f"preset:            {meta.get('preset')} (grid stride {meta.get('stride')} px)")
    print(f"heads:             {', '.join(meta.get('heads', []))}")
    print(f"parameters:        body {count_parameters(net.body):,}, "
          f"per head {count_parameters(net.heads['generic']):,}")
    print(f"particle extent:   {meta.get('extent_px')} px after rescaling")
    from ..checkpoint import default_head

    own = default_head(meta)
    print(f"default head:      {own}" + (" (picks unless --head says otherwise)" if own != "generic" else ""))
    print(f"default threshold: {meta.get('default_threshold')} (of head {own}; FOM floor {meta.get('floor')})")
    for head, ft in (meta.get("finetune") or {}).items():  # few-shot heads: their own data and numbers
        ap = ft.get("validation_AP")
        print(f"few-shot head:     {head}: fine-tuned from {ft.get('base_model')} on "
              f"{len(ft.get('micrographs') or [])} micrographs, {ft.get('n_picks')} picks, diameter "
              f"{ft.get('diameter_A')} A; threshold {ft.get('threshold')}")
        print(f"validation AP:     {'n/a (no validation micrographs)' if ap is None else f'{ap:.3f}'} "
              f"(head {head}, on its held-out labelled micrographs)")
        taught = ft.get("centre_refiner") or {}
        if taught:  # hydra finetune: the centre refiner taught the head's labels, or why not
            named = taught.get("taught") and taught.get("file") == meta.get("refiner")
            print(f"centres:           {head}: "
                  + (f"re-centred by {meta['refiner']}, the centre refiner taught its {taught.get('labels')} "
                     f"labels (beside the model)" if named else
                     f"its own (the model names no refiner taught its labels: "
                     f"{taught.get('reason') if not taught.get('taught') else 'a later head has its own'})"))
        if ft.get("adaptation"):  # hydra pick --adapt: pseudo-labels, not labels
            from ..class_centres import class_centring_on

            centred = class_centring_on(None, False, None, meta, head)
            print(f"self-adapted:      {head}: learnt without labels (hydra pick --adapt); its picks are "
                  + ("class-centred by default (--no-class-centres: off)" if centred else
                     "not class-centred by default (--class-centres: on)")
                  + (f", on the data set's class averages ({meta['class_references'].get('confident')} "
                     f"confident picks)" if centred and meta.get("class_references") else "")
                  + (f"; centre refiner {meta['refiner']}" if meta.get("refiner") else ""))
    if meta.get("validation_AP_mean") is not None:
        print(f"validation AP:     {meta['validation_AP_mean']:.3f} (head generic, mean over the base model's "
              f"simulated validation sets)")
    if tr:
        print(f"training:          {len(tr.get('datasets', []))} simulated datasets, phase {tr.get('phase')}, "
              f"step {tr.get('step')} (the generic head and body)")
    if meta.get("note"):
        print(f"note:              {meta['note']}")
    return 0
