"""Sharpness of saved minimisers (Tables 3 and 4 of Keskar et al.) and their top Hessian
eigenvalues. `run` measures one --checkpoint; `measure_minimizers` serves table2.

Paper artifact -> flags/table2_<net>.flags (or --experiment=sharpness) -> this module ->
lbtf.sharpness.sharpness_at, lbtf.hessian.top_eigenvalues_at.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pandas as pd
import tensorflow as tf

from lbtf import report
from lbtf.bn import measurement_model
from lbtf.checkpoints import checkpoint_at, load_weights
from lbtf.errors import UsageError
from lbtf.experiments import common
from lbtf.hessian import top_eigenvalues_at
from lbtf.models import build_model
from lbtf.objective import Objective, flat_weights, measurement_loss, subsample
from lbtf.sharpness import Subspace, sharpness_at


def resolve_checkpoint(path: str | None) -> str:
    """A checkpoint prefix from a prefix or a folder (its last kept epoch, or its latest
    checkpoint when it is not an lbtf run's folder)."""
    if not path:
        raise UsageError("--experiment=sharpness needs --checkpoint=PATH (a weights checkpoint "
                         "prefix such as outputs/<run>/checkpoints/trial0_LB/weights-40, or a folder)")
    if Path(path).is_dir():
        latest = checkpoint_at(path) or tf.train.latest_checkpoint(path)
        if latest is None:
            raise UsageError(f"no checkpoint in folder {path}; pass a folder written by lbtf")
        return latest
    if not Path(path + ".index").is_file():
        raise UsageError(f"checkpoint {path} not found (no {path}.index); pass an existing "
                         "weights checkpoint prefix or its folder")
    return path


def measure_minimizers(flags, data, minimizers: list[dict], *, strategy=None, log=print,
                       cache_dir: Path | None = None) -> pd.DataFrame:
    """Full-space and subspace sharpness at every eps, and the top Hessian eigenvalues, of every
    minimiser (dicts with a 'checkpoint' and label fields), under every --measure_bn mode. One row
    per measurement, labelled with its BN mode ("bn") and loss clip ("loss_clip").

    One network, one objective per BN mode (compiled once) and one random subspace A serve every
    minimiser, so their values are comparable and the cost is that of the measurements alone.
    With `cache_dir`, each minimiser's measurements are kept there and skipped when the run is
    started again.
    """
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(flags.network, input_shape=data.input_shape,
                            num_classes=data.num_classes, variant=flags.arch_variant)
        nets = {mode: measurement_model(model, mode) for mode in flags.measure_bn}
    x, y = subsample(data.x_train, data.y_train, flags.sharpness_examples or None, flags.seed)
    objectives = {mode: Objective(net, x, y, loss=measurement_loss(flags.loss_clip),
                                  batch_size=common.measurement_chunk(flags, mode),
                                  jit_compile=flags.jit_compile,
                                  strategy=strategy)
                  for mode, net in nets.items()}
    size = next(iter(objectives.values())).size
    subspace = (Subspace(size, flags.subspace_dim, seed=flags.seed,
                         memory_budget_mb=flags.subspace_memory_mb) if flags.subspace_dim else None)
    rows = []
    for m in minimizers:
        labels = {k: v for k, v in m.items() if k != "checkpoint"}
        measure = functools.partial(_measure_one, flags, model, objectives, subspace,
                                    m["checkpoint"], labels, log)
        if cache_dir is None:
            rows += measure()["rows"]
        else:
            name = "_".join(f"{k}{v}" for k, v in labels.items()) or "minimizer"
            rows += common.cached(Path(cache_dir) / f"{name}.json", measure, log=log)["rows"]
    return pd.DataFrame(rows)


def _measure_one(flags, model, objectives: dict, subspace, checkpoint: str, labels: dict,
                 log) -> dict:
    load_weights(model, checkpoint, flags.network)
    x0 = flat_weights(model)
    spaces = [("full", None, None)]
    if subspace is not None:
        spaces.append(("subspace", subspace, subspace.pinv_apply(x0)))
    rows = []
    for mode, objective in objectives.items():
        how = {"bn": mode, "loss_clip": flags.loss_clip,
               "bn_chunk": objective.batch_size if mode == "batch" else None}
        for eps in (float(e) for e in flags.epsilons):
            for space, sub, center in spaces:
                r = sharpness_at(objective, x0, epsilon=eps, subspace=sub, center=center,
                                 maxiter=flags.sharpness_maxiter, starts=flags.sharpness_starts,
                                 seed=flags.seed)
                rows.append({**labels, "measure": "sharpness", "space": space, **how,
                             **dataclasses.asdict(r)})
                log(f"  sharpness {labels} {mode:6s} BN {space:8s} eps={eps:g}: {r.value:10.4f}"
                    f"  (f {r.f_x:.3g} -> {r.f_max:.3g}, {r.nit} it, {r.nfev} evals, "
                    f"{r.seconds:.1f}s; {r.message}"
                    + ("; STOPPED BEFORE ITS FIRST ITERATION" if r.stopped_at_start else "") + ")")
        if flags.hessian_k:
            e = top_eigenvalues_at(objective, x0, k=flags.hessian_k, seed=flags.seed)
            rows.append({**labels, "measure": "hessian", "space": "full", **how,
                         "value": e.eigenvalues[0], "eigenvalues": e.eigenvalues,
                         "nfev": e.num_hvp, "num_examples": e.num_examples})
            log(f"  hessian   {labels} {mode:6s} BN top eigenvalues "
                f"{[round(v, 4) for v in e.eigenvalues]}")
    return {"rows": rows}


def run(flags, log=print):
    checkpoint = resolve_checkpoint(flags.checkpoint)
    data, strategy, _ = common.prepare(flags, {})
    table = measure_minimizers(flags, data, [{"checkpoint": checkpoint}], strategy=strategy,
                               log=log)
    run_dir = common.start_run(flags, "sharpness", strategy)
    text = "\n\n".join([f"# Sharpness of {checkpoint}",
                        f"{flags.network} ({flags.arch_variant}) on {data.name}, "
                        f"{len(table)} measurements.", report.measurements_markdown(table)])
    results = {"experiment": "sharpness", "checkpoint": checkpoint, "network": flags.network,
               "dataset": data.name, "environment": common.environment(strategy),
               "measurement": common.measurement_record(flags),
               "measurements": table.to_dict(orient="records")}
    common.write_results(run_dir, results, text + "\n", log=log)
    log(f"\n{report.measurements_markdown(table)}\n\nreport: {run_dir / 'report.md'}")
    return run_dir
