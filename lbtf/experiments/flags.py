"""Every command-line flag of lbtf, with its validators. Imported only by run_experiments.py and
lbtf.experiments; library modules take plain arguments. It imports no TensorFlow (lbtf.choices,
lbtf.data are plain Python and NumPy), so flag errors are reported at once."""

from __future__ import annotations

import re

from absl import flags

from lbtf.choices import (
    BN_MODES,
    LR_SCALINGS,
    MEASURE_BN,
    MEASURE_POINTS,
    MEASURES,
    NETWORKS,
    NORMALIZATIONS,
    OPTIMIZERS,
    PATHS,
    STRATEGIES,
    VARIANTS,
    parse_batch_size,
)
from lbtf.data import LOADERS
from lbtf.experiments.sharding import SHARDED
from lbtf.remedies import REGIMES, Remedies

EXPERIMENTS = ("table2", "train", "sharpness", "batch_sweep", "warm_start", "trajectory",
               "remedies", "hoffer", "performance_model", "info")

# What to run.
flags.DEFINE_enum("experiment", "table2", EXPERIMENTS,
                  "table2: SB vs LB Adam over trials, with the sharpness of every minimiser, "
                  "training curves and parametric plots (Tables 2-4, Figures 2, 3, 7); train: one "
                  "batch size over trials; sharpness: measure --checkpoint; batch_sweep: accuracy "
                  "and sharpness against batch size (Figure 4); warm_start: LB runs started from "
                  "SB iterates (Figure 5); trajectory: sharpness against training loss along SB "
                  "and LB runs (Figure 6); remedies: SB, LB and LB with each remedy (ghost BN + "
                  "sqrt lr + regime adaptation, augmentation, conservative, adversarial, SAM); "
                  "hoffer: Hoffer et al.'s Table 1 (SB, LB, +LR, +GBN, +RA, fixed budgets); "
                  "performance_model: Appendix C's calculator; info: the six networks' sizes.")
flags.DEFINE_string("network", "F1", "Network: Keskar et al.'s Appendix B (F1-C4), Hoffer et "
                    "al.'s residual networks (resnet44, wrn16_4), or your own as "
                    "package.module:builder (a function of input_shape, num_classes and, for BN "
                    "treatments, norm; ending in a softmax).")
flags.DEFINE_enum("arch_variant", "paper", VARIANTS,
                  "paper: Appendix B as written; reference: the authors' released code.")
# Data.
flags.DEFINE_string("dataset", "mnist1d", f"Dataset: one of {', '.join(sorted(LOADERS))} "
                    "(docs/data_and_networks.md), or your own as npz:FILE.npz (x_train, y_train, "
                    "x_test, y_test).")
flags.DEFINE_string("data_dir", None, "Data root: tfds data and the MNIST-1D cache "
                    "(default: tfds' own and ~/.cache/lbtf).")
flags.DEFINE_integer("mnist1d_samples", 5000, "MNIST-1D samples (80% train, 20% test).",
                     lower_bound=100)
flags.DEFINE_boolean("tfds_download", True, "Let tensorflow-datasets fetch missing data.")
flags.DEFINE_boolean("normalize", False, "Standardise every input channel by the training set's "
                     "mean and std (Hoffer et al.'s CIFAR input).")
flags.DEFINE_integer("crop_flip_pad", 0, "Augmentation in the training step, per image: pad "
                     "this many pixels, crop back at a random offset, flip horizontally (0: off; "
                     "Hoffer et al.'s CIFAR loader: 4, their MNIST loader: 2; images only).",
                     lower_bound=0)
flags.DEFINE_string("timit_path", None, "TIMIT .npz (x_train, y_train, x_test, y_test).")
flags.DEFINE_list("synthetic_shape", ["784"], "Synthetic input shape, e.g. 784 or 32,32,3.")
flags.DEFINE_integer("synthetic_classes", 10, "Synthetic class count.", lower_bound=2)
flags.DEFINE_integer("synthetic_train", 60000, "Synthetic training examples.", lower_bound=1)
flags.DEFINE_integer("synthetic_test", 10000, "Synthetic test examples.", lower_bound=1)
# Training.
flags.DEFINE_string("batch_size", "256", "Batch for --experiment=train: an integer, or a "
                    "fraction of the training set such as 0.1 or 10%.")
flags.DEFINE_string("sb_batch_size", "32", "Small batch (integer or fraction). Paper: 256 (set in "
                    "flags/); the no-flag demo uses 32 so that SB:LB stays near the paper's 1:20 "
                    "on 4000 examples (LB 10% = 400).")
flags.DEFINE_string("lb_batch_size", "0.1", "Large batch (integer or fraction); paper: 10%.")
flags.DEFINE_float("learning_rate", 1e-3, "Initial learning rate (Adam: Keras' default 1e-3).")
flags.DEFINE_enum("optimizer", "adam", OPTIMIZERS, "adam (Keskar et al.) or sgd (Hoffer et al.).")
flags.DEFINE_float("momentum", 0.0, "SGD momentum (Hoffer et al.: 0.9; C1 and C3: 0).",
                   lower_bound=0, upper_bound=1)
flags.DEFINE_float("weight_decay", 0.0, "L2 weight decay: weight_decay * w added to the (clipped) "
                   "gradient, as PyTorch's SGD (Hoffer et al.: 1e-4, C1 and C3: 5e-4).",
                   lower_bound=0)
flags.DEFINE_integer("trials", 3, "Trials from different seeded starting points (paper: 5, set "
                     "in flags/table2_*.flags; 3 keeps the no-flag demo within 5 minutes).",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Base seed; trial t uses seed + t for weights and shuffling.")
flags.DEFINE_integer("max_epochs", 200, "Epoch budget per run.", lower_bound=1)
flags.DEFINE_integer("patience", 10, "Stop after this many epochs without the training loss "
                     "improving by min_delta.", lower_bound=1)
flags.DEFINE_integer("measure_every", 1, "Measure the training and test loss and accuracy every "
                     "N-th epoch and the last (1: every epoch, as the paper). --patience still "
                     "counts epochs: a run stops once the measurements of the last --patience "
                     "epochs (rounded up to N) fail to improve. Regime adaptation multiplies it.",
                     lower_bound=1)
flags.DEFINE_float("min_delta", 1e-4, "Improvement of the training loss that counts.",
                   lower_bound=0)
flags.DEFINE_enum("strategy", "auto", STRATEGIES,
                  "auto: MirroredStrategy over several GPUs, else one device; mirrored: every "
                  "local GPU; multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG; slurm: "
                  "MultiWorkerMirroredStrategy over a Slurm job's tasks (see scripts/).")
flags.DEFINE_integer("slurm_port_base", 8888, "First port of the workers of --strategy=slurm.",
                     lower_bound=1024, upper_bound=65000)
flags.DEFINE_boolean("deterministic", False, "Deterministic TensorFlow ops "
                     "(tf.config.experimental.enable_op_determinism): a resumed run then ends "
                     "exactly like an uninterrupted one. Can be slower on GPUs.")
flags.DEFINE_integer("steps_per_loop", 0, "Steps per in-graph loop (0: a whole epoch).",
                     lower_bound=0)
flags.DEFINE_integer("eval_batch_size", 2048, "Batch for measuring loss and accuracy.",
                     lower_bound=1)
flags.DEFINE_boolean("jit_compile", True, "Compile loops with XLA (single replica; not for "
                     "networks with convolutions on a CPU, where XLA measured 6-22x slower).")
flags.DEFINE_enum("bn_eval", "recompute", ["recompute", "moving"], "BN statistics used to "
                  "evaluate and checkpoint: recompute them from training data before each "
                  "evaluation (population statistics), or Keras' moving averages, which lag the "
                  "weights when epochs have few steps.")
flags.DEFINE_integer("bn_eval_examples", 10000, "Training examples (a seeded subset) for "
                     "--bn_eval=recompute (0: all).", lower_bound=0)
flags.DEFINE_integer("checkpoint_every", 0, "Also keep the weights of every N-th epoch (0: only "
                     "what experiments read back: the start, the epoch of lowest training loss "
                     "and the last; warm_start and trajectory keep the iterates they need).",
                     lower_bound=0)
flags.DEFINE_float("resume_interval", 30.0, "Seconds between resume checkpoints (0: after every "
                   "epoch; multi-worker jobs save after every epoch). A killed run redoes at "
                   "most this much work; the checkpoint is deleted once the run's record is "
                   "written.", lower_bound=0)
# Remedies (Hoffer et al. 2017; Keskar et al. Appendix E; SAM). Off by default; they apply to every
# run of every training experiment (--experiment=remedies sets them per regime itself).
flags.DEFINE_enum("bn_layer", "standard", NORMALIZATIONS, "BN layer of every network, the same on "
                  "any number of replicas: standard (statistics over the global batch; synchronized "
                  "BN on several replicas), ghost (GhostBatchNormalization over ghosts of "
                  "--ghost_batch_size of the global batch), sync (Keras BN always synchronized) or "
                  "per_replica (each replica's share normalised alone: ghost BN of B / replicas, on "
                  "purpose) or none (no normalisation: the control for sharpness without BN).")
flags.DEFINE_float("bn_momentum", 0.99, "Momentum of the BN moving statistics, Keras' convention "
                   "(0.99, Keras' default; PyTorch's default, which Hoffer et al. ran, is 0.9 "
                   "here).", lower_bound=0, upper_bound=1)
flags.DEFINE_integer("ghost_batch_size", 128, "Ghost batch size of --bn_layer=ghost (Hoffer: 128).",
                     lower_bound=1)
_OFF = Remedies()  # every remedy's default is off
flags.DEFINE_enum("lr_scaling", _OFF.lr_scaling, LR_SCALINGS, "Scale --learning_rate with the "
                  "batch B: none, sqrt (x sqrt(B / B_ref), Hoffer) or linear (x B / B_ref).")
flags.DEFINE_integer("lr_reference_batch", _OFF.lr_reference_batch, "B_ref of --lr_scaling and "
                     "--regime_adaptation.", lower_bound=1)
flags.DEFINE_boolean("regime_adaptation", _OFF.regime_adaptation, "Train longer: multiply "
                     "--max_epochs, --patience, --lr_milestones and --measure_every by B / B_ref, so "
                     "LB makes as many updates as B_ref.")
flags.DEFINE_list("lr_milestones", [], "Epochs at which the learning rate is multiplied by "
                  "--lr_decay (empty: constant).")
flags.DEFINE_list("lr_values", [], "Learning rates from each milestone on, one per milestone "
                  "(empty: --learning_rate times --lr_decay per milestone); scaled like "
                  "--learning_rate by --lr_scaling.")
flags.DEFINE_float("lr_decay", 0.1, "Learning-rate factor at each milestone.", lower_bound=0)
flags.DEFINE_float("clip_norm", _OFF.clip_norm, "Clip gradients to this global norm (0: off; "
                   "Hoffer: 5).", lower_bound=0)
flags.DEFINE_float("sam_rho", _OFF.sam_rho, "Sharpness-Aware Minimization radius rho (0: off; "
                   "Foret et al.: 0.05).", lower_bound=0)
flags.DEFINE_float("fgsm_epsilon", _OFF.fgsm_epsilon, "Adversarial training on FGSM examples of "
                   "this max-norm size, in input units (0: off).", lower_bound=0)
flags.DEFINE_float("conservative_lambda", _OFF.conservative_lambda, "Conservative training: "
                   "proximal weight lambda (0: off; Keskar et al.: 1e-3).", lower_bound=0)
flags.DEFINE_integer("conservative_steps", _OFF.conservative_steps, "Adam steps per proximal "
                     "subproblem (paper: 3-5).", lower_bound=1)
flags.DEFINE_boolean("augment", _OFF.augment, "On-the-fly augmentation of image data: random "
                     "rotations (10 degrees), translations (10%) and horizontal reflections.")
flags.DEFINE_float("label_smoothing", _OFF.label_smoothing, "Label smoothing s: train on targets "
                   "(1 - s) one-hot + s / K (0: off; Szegedy et al.: 0.1).", lower_bound=0,
                   upper_bound=1)
flags.DEFINE_integer("diffusion_every", _OFF.diffusion_every, "Record ||w_t - w_0|| every N steps "
                     "(0: off).", lower_bound=0)
flags.DEFINE_list("remedies", ["ghost", "augment", "conservative", "adversarial", "sam"],
                  f"Remedy regimes of --experiment=remedies, beside SB and LB, from "
                  f"{', '.join(REGIMES)} (lbtf.remedies.REGIMES).")
# Appendix C: the idealised performance model (--experiment=performance_model).
flags.DEFINE_integer("perf_processors", 8, "P: processors (the model needs P < B_l).",
                     lower_bound=1)
flags.DEFINE_float("perf_sb_efficiency", 0.2, "f_s(P): the SB method's parallel efficiency.",
                   lower_bound=0, upper_bound=1)
flags.DEFINE_float("perf_sb_iterations", 10000, "I_s: SB iterations to the target accuracy.",
                   lower_bound=0)
flags.DEFINE_float("perf_lb_iterations", 0, "I_l: LB iterations (0: report the break-even only).",
                   lower_bound=0)
flags.DEFINE_integer("perf_num_train", 0, "Training-set size, to resolve fractional batch sizes "
                     "(0: the dataset's).", lower_bound=0)
# Sharpness (Metric 2.1) and curvature.
flags.DEFINE_boolean("sharpness", True, "Measure every minimiser's sharpness after training.")
flags.DEFINE_list("epsilons", ["1e-3", "5e-4"], "Box sizes eps of Metric 2.1 (paper: 1e-3, 5e-4).")
flags.DEFINE_integer("subspace_dim", 100, "Random subspace dimension p (0: full space only).",
                     lower_bound=0)
flags.DEFINE_integer("sharpness_maxiter", 10, "L-BFGS-B iterations (paper: 10).", lower_bound=1)
flags.DEFINE_integer("sharpness_examples", 0, "Evaluate f on a seeded random subset of this many "
                     "training examples (0: the whole training set, as in the paper).",
                     lower_bound=0)
flags.DEFINE_float("subspace_memory_mb", 1024, "Above this size the random subspace matrix is "
                   "generated block by block for every product instead of held.", lower_bound=0)
flags.DEFINE_integer("sharpness_starts", 1, "L-BFGS-B runs per measurement: from y = 0 and from "
                     "K - 1 seeded random points of the box; the largest f found counts (paper: "
                     "1, from a start it does not state).", lower_bound=1)
flags.DEFINE_list("bn_measure", ["moving", "batch"], "BN during measurements (sharpness, Hessian, "
                  "parametric plots), one table per mode: moving (inference mode, with the "
                  "statistics stored with the weights: those --bn_eval left) or batch (every "
                  "evaluation chunk normalised with its own statistics, dropout off: the "
                  "authors' Keras-1 BN mode 2).")
flags.DEFINE_integer("bn_measure_chunk", 5000, "Examples per evaluation chunk of --bn_measure="
                     "batch (the authors' parametric-plot script evaluated in batches of 5000).",
                     lower_bound=2)
flags.DEFINE_float("loss_clip", 1e-7, "Measure the cross-entropy of probabilities clipped to "
                   "[c, 1 - c], as Keras 1 did with c = 1e-7 (one example's loss at most 16.1); "
                   "0: exact cross-entropy. Training is never clipped.", lower_bound=0,
                   upper_bound=0.1)
flags.DEFINE_enum("measure_point", "best", MEASURE_POINTS, "The weights a run is measured at "
                  "(Table 2, sharpness, distances, parametric plots): the epoch with the lowest "
                  "training loss, or the last epoch.")
flags.DEFINE_float("measure_at_loss", 0.0, "Measure every run instead at the first epoch whose "
                   "training loss is at most this (Jiang et al. 2020 stop every network at "
                   "cross-entropy 0.01): minimisers compared at one depth, not wherever each run "
                   "stopped; a run that never reaches it is measured at its lowest loss and marked "
                   "(reached_loss). Needs --checkpoint_every=1. 0: off.", lower_bound=0)
flags.DEFINE_integer("hessian_k", 0, "Largest Hessian eigenvalues per minimiser, by Lanczos "
                     "(0: skip; 1 costs ~12-20 Hessian-vector products per minimiser).", lower_bound=0)
flags.DEFINE_list("measures", ["keskar"], "Sharpness measures at every minimiser, each under every "
                  "--bn_measure mode: keskar (Metric 2.1, box eps (|x_i| + 1)), adaptive (the "
                  "same maximisation over eps |x_i|, invariant to rescaling the weights that feed "
                  "BN), average (E[f(x + d)] - f(x), d_i ~ N(0, (--average_sigma |x_i|)^2)), "
                  "pacbayes (1 / sigma'^2, magnitude-aware PAC-Bayes flatness), hessian (top "
                  "eigenvalue; --hessian_k of them) and trace (Hutchinson).")
flags.DEFINE_float("average_sigma", 0.01, "sigma of --measures=average (noise std sigma |x_i|).",
                   lower_bound=0)
flags.DEFINE_integer("measure_samples", 10, "Seeded Monte-Carlo draws of --measures=average, "
                     "pacbayes and trace (each value reported with its standard error).",
                     lower_bound=2)
flags.DEFINE_float("pacbayes_target", 0.1, "The rise of the mean training loss --measures="
                   "pacbayes allows.", lower_bound=0)
flags.DEFINE_float("pacbayes_eps", 1e-3, "eps' of --measures=pacbayes (noise variance sigma'^2 "
                   "x_i^2 + eps'^2; Jiang et al.: 1e-3).", lower_bound=0)
flags.DEFINE_float("rescale_check", 0.0, "Measure every minimiser again after multiplying the "
                   "weights that feed each BN layer by this factor (their moving statistics scaled "
                   "to match: the same function), and report which values moved (0: off).",
                   lower_bound=0)
flags.DEFINE_string("checkpoint", None, "For --experiment=sharpness: a weights checkpoint "
                    "written by lbtf (prefix such as .../weights-40, or its folder for the last).")
# Loss landscape (Figures 3 and 7).
flags.DEFINE_list("parametric", ["linear"], "Paths between the SB and LB minimisers of one trial to "
                  "plot in table2: linear (Figure 3), curvilinear (Figure 7); empty for none.")
flags.DEFINE_integer("parametric_points", 25, "Evenly spaced alphas on each path (0 and 1 are "
                     "always added).", lower_bound=2)
flags.DEFINE_float("alpha_min", -1.0, "Start of the alpha range (paper: -1).")
flags.DEFINE_float("alpha_max", 2.0, "End of the alpha range (paper: 2).")
flags.DEFINE_integer("parametric_trial", 0, "Trial whose SB and LB minimisers are plotted.",
                     lower_bound=0)
flags.DEFINE_enum("bn_path", "recompute", BN_MODES, "BN statistics along a path: recompute "
                  "them from training data at every point (as --bn_eval=recompute does after "
                  "every epoch), or interpolate them (means "
                  "linearly, variances log-linearly, never negative).")
# Batch-size sweep (Figure 4), warm starts (Figure 5), trajectories (Figure 6).
flags.DEFINE_list("batch_sizes", ["256", "512", "1024", "0.05", "0.1", "0.2"],
                  "Batch sizes of --experiment=batch_sweep (integers or fractions).")
flags.DEFINE_integer("warm_start_epochs", 20, "SB epochs whose iterates start LB runs (paper: "
                     "100).", lower_bound=1)
flags.DEFINE_integer("warm_start_stride", 2, "Start an LB run from every N-th SB iterate.",
                     lower_bound=1)
flags.DEFINE_integer("trajectory_stride", 2, "Measure every N-th epoch's iterate (and the last).",
                     lower_bound=1)
# Output.
flags.DEFINE_string("output_dir", "outputs", "Root of the run folders.")
flags.DEFINE_string("run_name", None, "Run folder name under --output_dir (default: "
                    "<experiment>_<timestamp>). Starting again with the same name and flags "
                    "resumes: finished runs and measurements are skipped.")
flags.DEFINE_string("shard", None, "i/N: train and measure only run k with k mod N = i of the "
                    "experiment (trials x regimes), in the --run_name folder the other shards share; "
                    "then the same command without --shard writes the results. One process per "
                    "GPU: scripts/multi_gpu_node.sh; a Slurm array: scripts/slurm_array.sbatch.")


# Renamed after 0.1.0 so that every BN flag starts with bn_; the old names stay for one release, so
# older flagfiles and run folders' flags.txt still work.
RENAMED = {"bn": "bn_layer", "bn_stats": "bn_path", "measure_bn": "bn_measure",
           "measure_bn_chunk": "bn_measure_chunk"}
for _old, _new in RENAMED.items():
    flags.DEFINE_alias(_old, _new)


def _valid_batch(text: str) -> bool:
    try:
        parse_batch_size(text)
    except ValueError as e:
        raise flags.ValidationError(str(e)) from None
    return True


for _name in ("batch_size", "sb_batch_size", "lb_batch_size"):
    flags.register_validator(_name, _valid_batch)


@flags.validator("batch_sizes", message="--batch_sizes takes integers or fractions, e.g. "
                 "256,1024,0.1")
def _valid_batches(values: list[str]) -> bool:
    return bool(values) and all(_valid_batch(v) for v in values)


@flags.validator("bn_measure", message=f"--bn_measure takes one or both of {', '.join(MEASURE_BN)}")
def _valid_measure_bn(values: list[str]) -> bool:
    return bool(values) and len(set(values)) == len(values) and all(v in MEASURE_BN for v in values)


@flags.validator("parametric", message=f"--parametric takes paths from {', '.join(PATHS)} "
                 "(or nothing)")
def _valid_paths(values: list[str]) -> bool:
    return all(v in PATHS for v in values)


@flags.validator("network", message=f"--network takes one of {', '.join(NETWORKS)} or "
                 "package.module:builder")
def _valid_network(value: str) -> bool:
    return value in NETWORKS or bool(re.fullmatch(r"[\w.]+:\w+", value))


@flags.validator("dataset", message=f"--dataset takes one of {', '.join(sorted(LOADERS))} or "
                 "npz:FILE.npz")
def _valid_dataset(value: str) -> bool:
    return value in LOADERS or (value.startswith("npz:") and len(value) > 4)


@flags.validator("measures", message=f"--measures takes names from {', '.join(MEASURES)}")
def _valid_measures(values: list[str]) -> bool:
    return bool(values) and len(set(values)) == len(values) and all(v in MEASURES for v in values)


@flags.validator("remedies", message=f"--remedies takes names from {', '.join(REGIMES)}")
def _valid_remedies(values: list[str]) -> bool:
    return all(v in REGIMES for v in values)


@flags.validator("lr_values", message="--lr_values takes positive numbers, e.g. 0.01,0.001")
def _valid_lr_values(values: list[str]) -> bool:
    try:
        return all(float(v) > 0 for v in values)
    except ValueError:
        return False


flags.register_multi_flags_validator(
    ["lr_values", "lr_milestones"], lambda d: not d["lr_values"]
    or len(d["lr_values"]) == len(d["lr_milestones"]),
    message="--lr_values needs one learning rate per --lr_milestones epoch")


@flags.validator("lr_milestones", message="--lr_milestones takes positive epochs, e.g. 30,60")
def _valid_milestones(values: list[str]) -> bool:
    return all(v.strip().isdigit() and int(v) > 0 for v in values)


flags.register_multi_flags_validator(
    ["measure_at_loss", "checkpoint_every", "measure_every"],
    lambda d: not d["measure_at_loss"] or (d["checkpoint_every"] == 1 and d["measure_every"] == 1),
    message="--measure_at_loss measures the epoch a run first reaches that loss: keep every "
            "epoch's weights with --checkpoint_every=1 (and --measure_every=1)")


flags.register_multi_flags_validator(
    ["measure_every", "checkpoint_every", "warm_start_stride", "trajectory_stride", "experiment"],
    lambda d: d["checkpoint_every"] % d["measure_every"] == 0 and (
        d["experiment"] not in ("warm_start", "trajectory")
        or d[f"{d['experiment']}_stride"] % d["measure_every"] == 0),
    message="--checkpoint_every and the warm_start/trajectory stride keep measured epochs: make "
            "them multiples of --measure_every")


flags.register_multi_flags_validator(
    ["alpha_min", "alpha_max"], lambda d: d["alpha_min"] < d["alpha_max"],
    message="--alpha_min must be below --alpha_max, e.g. -1 and 2")


@flags.validator("run_name", message="--run_name must be a plain folder name (letters, digits, "
                 "'-', '_', '.'), not a path")
def _valid_run_name(value: str | None) -> bool:
    return value is None or (bool(re.fullmatch(r"[\w.-]+", value)) and value not in (".", ".."))


@flags.validator("learning_rate", message="--learning_rate must be positive, e.g. 1e-3")
def _valid_learning_rate(value: float) -> bool:
    return value > 0


@flags.validator("epsilons", message="--epsilons takes positive numbers, e.g. 1e-3,5e-4")
def _valid_epsilons(values: list[str]) -> bool:
    try:
        return bool(values) and all(float(v) > 0 for v in values)
    except ValueError:
        return False


@flags.validator("synthetic_shape", message="--synthetic_shape takes positive integers, e.g. "
                 "784 or 32,32,3")
def _valid_shape(dims: list[str]) -> bool:
    return bool(dims) and all(d.strip().isdigit() and int(d) > 0 for d in dims)


@flags.multi_flags_validator(["shard", "experiment", "run_name", "strategy"],
                             message="--shard=i/N (0 <= i < N) needs --run_name (the folder every "
                             f"shard writes), an experiment of {', '.join(SHARDED)}, and a "
                             "single-process strategy (auto or mirrored)")
def _valid_shard(d: dict) -> bool:
    if d["shard"] is None:
        return True
    share = re.fullmatch(r"(\d+)/(\d+)", d["shard"])
    return (bool(share) and int(share[1]) < int(share[2]) and d["run_name"] is not None
            and d["experiment"] in SHARDED and d["strategy"] in ("auto", "mirrored"))


# How the work is split is not what is computed: shards of one run folder save the same flags.
NOT_SAVED = ("shard",)


def module_flags() -> list:
    """This module's flags (not absl's own, nor the old names)."""
    return [f for f in flags.FLAGS.get_flags_for_module(__name__) if f.name not in RENAMED]


def explicit_flags() -> tuple[str, ...]:
    """The lbtf flags the command line or a flagfile set (not left at their defaults)."""
    return tuple(f.name for f in module_flags() if f.present)


def read_saved(path) -> dict[str, object]:
    """A run's flags.txt as {flag name: value}, each parsed by its flag's own parser; names lbtf
    no longer defines are skipped."""
    known, values = {f.name: f for f in module_flags()}, {}
    with open(path) as f:
        lines = [s.strip() for s in f.read().splitlines()]
    for line in lines:
        if not line.startswith("--"):
            continue
        name, eq, text = line[2:].partition("=")
        if not eq:  # a boolean: --name or --noname
            name, text = (name[2:], "false") if name not in known and name[2:] in known else (
                name, "true")
        if name in known:
            values[name] = known[name].parser.parse(text)
    return values


# The last line of every flags.txt: a file without it was cut short (a failing disk, a crash of
# an older writer) and cannot be told from another run's flags.
END = "# end of an lbtf run's flags"


def flags_text() -> str:
    """The resolved flags as a flagfile (the run folder's flags.txt), ending in END."""
    return "".join(f.serialize() + "\n" for f in module_flags()
                   if f.value is not None and f.name not in NOT_SAVED) + END + "\n"


def parse(argv: list[str]):
    """The Config of command-line arguments `argv` (without the program name), parsed and
    validated by absl as run_experiments.py does: how tests run an experiment in-process."""
    from lbtf.experiments.config import from_flags
    from lbtf.experiments.flagfiles import expand

    flags.FLAGS.unparse_flags()
    flags.FLAGS(["lbtf", *expand(list(argv))])
    return from_flags(flags.FLAGS, flags_text(), explicit_flags())
