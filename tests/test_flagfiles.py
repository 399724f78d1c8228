"""Every paper artifact has a flagfile per network (and a _cpu variant); every flagfile parses
against lbtf's flag definitions and runs the experiment that produces its artifact."""

from pathlib import Path

import pytest
from absl import flags

import lbtf.experiments.flags  # noqa: F401  (defines the flags)
from lbtf.experiments.flagfiles import expand
from lbtf.models import KESKAR_NETWORKS, PAPER_DATASET

REPO = Path(__file__).resolve().parents[1]
FLAGFILES = sorted((REPO / "flags").glob("*.flags"))
# Paper artifact -> (experiment that produces it, networks the paper shows it for).
ARTIFACTS = {"table2": ("table2", KESKAR_NETWORKS), "table3": ("table2", KESKAR_NETWORKS),
             "table4": ("table2", KESKAR_NETWORKS), "figure2": ("table2", ("F2", "C1")),
             "figure3": ("table2", KESKAR_NETWORKS), "figure7": ("table2", KESKAR_NETWORKS),
             "figure4": ("batch_sweep", ("F2", "C1")), "figure5": ("warm_start", ("F2", "C1")),
             "figure6": ("trajectory", ("F2", "C1")), "remedies": ("remedies", KESKAR_NETWORKS),
             "hoffer": ("hoffer", ("F1", "C1", "resnet44", "C2", "C3", "wrn16_4")),
             "study": ("batch_sweep", ("F1",))}
# Artifacts with a variant beside the paper's settings: the sharpness study without BN, and
# measured at one training loss.
VARIANTS = {"study": ("", "_nobn", "_atloss")}


def artifact_of(path: Path) -> tuple[str, str, str]:
    """(artifact, network, variant) of a flagfile name <artifact>_<network>[<variant>][_cpu]."""
    artifact, _, rest = path.stem.removesuffix("_cpu").partition("_")
    variant = next((v for v in VARIANTS.get(artifact, ()) if v and rest.endswith(v)), "")
    return artifact, rest.removesuffix(variant) if variant else rest, variant


@pytest.fixture()
def fresh_flags(monkeypatch):
    monkeypatch.chdir(REPO)
    flags.FLAGS.unparse_flags()
    yield flags.FLAGS
    flags.FLAGS.unparse_flags()


def test_every_artifact_has_a_paper_and_a_cpu_flagfile_per_network():
    expected = {f"{art}_{net}{variant}{v}.flags" for art, (_, nets) in ARTIFACTS.items()
                for net in nets for variant in VARIANTS.get(art, ("",)) for v in ("", "_cpu")}
    assert expected == {p.name for p in FLAGFILES}


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: p.name)
def test_flagfile_parses(path, fresh_flags):
    fresh_flags(["run_experiments.py", *expand([f"--flagfile={path}"])])
    artifact, network, variant = artifact_of(path)
    assert fresh_flags.bn_layer == ("none" if variant == "_nobn" else "standard")
    assert fresh_flags.experiment == ARTIFACTS[artifact][0] and fresh_flags.network == network
    batches = (fresh_flags.sb_batch_size, fresh_flags.lb_batch_size)
    hoffer = artifact == "hoffer"  # Hoffer et al.: SB 128, LB 4096; the twins keep the ratio 32
    if path.stem.endswith("_cpu"):
        # Embedded data, no download; one batch rule for every twin: SB 32 and LB 10% (Hoffer:
        # LB 1024, and image twins on the 8x8 digits, the only set on which ratio 32 fits).
        images = "digits" if hoffer else "cluttered_digits"
        assert fresh_flags.dataset == ("mnist1d" if network.startswith("F") else images)
        assert batches == (("32", "1024") if hoffer else ("32", "0.1"))
    else:
        assert batches == (("128", "4096") if hoffer else ("256", "0.1"))
        assert fresh_flags.dataset == PAPER_DATASET[network]
        assert list(fresh_flags.epsilons) == ["1e-3", "5e-4"]
        assert fresh_flags.sharpness_maxiter == 10
    if artifact == "table3":
        assert fresh_flags.subspace_dim == 0 and fresh_flags.sharpness
    if artifact in ("figure3", "figure7"):
        assert fresh_flags.parametric == ["linear" if artifact == "figure3" else "curvilinear"]
    if artifact in ("figure4", "figure5", "study"):  # long multi-run experiments resume
        assert fresh_flags.run_name == path.stem
    if artifact == "study":  # every measure at five batch sizes or more, three trials or more
        assert set(fresh_flags.measures) == {"keskar", "adaptive", "average", "pacbayes",
                                             "hessian", "trace"}
        assert len(fresh_flags.batch_sizes) >= 5 and fresh_flags.trials >= 3
        assert list(fresh_flags.bn_measure) == ["moving", "batch"]


def parsed(fresh_flags, *args) -> dict[str, str]:
    fresh_flags.unparse_flags()
    fresh_flags(["run_experiments.py", *expand(list(args))])
    return {name: fresh_flags[name].serialize() for name in fresh_flags}


@pytest.mark.parametrize("twin", [p for p in FLAGFILES if p.stem.endswith("_cpu")],
                         ids=lambda p: p.name)
def test_every_cpu_twin_is_its_paper_flagfile_plus_overrides_that_change_it(twin, fresh_flags):
    lines = [ln for ln in twin.read_text().splitlines() if ln.startswith("--")]
    paper = f"{twin.stem.removesuffix('_cpu')}.flags"
    assert lines[0] == f"--flagfile={paper}"  # beside the twin: found from any directory
    base = parsed(fresh_flags, f"--flagfile={paper}")
    full = parsed(fresh_flags, f"--flagfile={twin}")  # flags checked together (milestones, values)
    names = []
    for line in lines[1:]:  # each override changes what the paper file sets
        name = line[2:].split("=")[0]
        names.append(name if name in base else name.removeprefix("no"))  # --nosharpness
        assert full[names[-1]] != base[names[-1]], f"{twin.name}: {line} repeats {paper}"
    assert len(names) == len(set(names)), f"{twin.name} sets a flag twice"


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: p.name)
def test_header_states_the_runtime(path):
    """One '# Runtime on ...' statement before '# Run:' (measured, or said not to be): a _cpu
    twin's on 2 CPU cores, a paper flagfile's on one GPU."""
    lines = path.read_text().splitlines()
    found = [i for i, line in enumerate(lines) if line.startswith("# Runtime on ")]
    assert len(found) == 1 and found[0] < next(i for i, x in enumerate(lines) if x.startswith("# Run:"))
    text = lines[found[0]]
    assert text.startswith("# Runtime on 2 CPU cores: " if path.stem.endswith("_cpu")
                           else "# Runtime on one GPU: ")


def test_a_twin_by_name_from_another_directory_is_the_twin_by_path(tmp_path, monkeypatch):
    """`--flagfile=table2_C1_cpu` anywhere resolves to the repository's flags/table2_C1_cpu.flags,
    its parent found beside it: the same flags as naming both by path from the repository."""
    monkeypatch.chdir(REPO)
    by_path = expand(["--flagfile=flags/table2_C1_cpu.flags"])
    paper = expand(["--flagfile=flags/table2_C1.flags"])
    assert by_path[:len(paper)] == paper and len(by_path) > len(paper)
    monkeypatch.chdir(tmp_path)
    assert expand(["--flagfile=table2_C1_cpu"]) == by_path
    assert expand(["--flagfile", "table2_C1_cpu.flags", "--seed=3"])[-1] == "--seed=3"


def test_a_user_flagfile_names_its_parent_relative_to_itself(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "base.flags").write_text("# mine\n--seed=7\n\n// comment\n--trials=2\n")
    (tmp_path / "mine" / "twin.flags").write_text("--flagfile=base.flags\n--seed=8\n")
    monkeypatch.chdir(REPO)
    assert expand([f"--flagfile={tmp_path / 'mine' / 'twin.flags'}"]) == [
        "--seed=7", "--trials=2", "--seed=8"]


def test_a_missing_parent_is_named_with_the_file_that_names_it(tmp_path):
    from lbtf.errors import UsageError

    twin = tmp_path / "twin.flags"
    twin.write_text("--flagfile=nowhere.flags\n")
    with pytest.raises(UsageError, match=f"flagfile nowhere.flags not found \\(named in {twin}\\)"):
        expand([f"--flagfile={twin}"])
    loop = tmp_path / "loop.flags"
    loop.write_text("--flagfile=loop.flags\n")
    with pytest.raises(UsageError, match="names itself"):
        expand([f"--flagfile={loop}"])


def test_the_command_line_takes_a_flagfile_by_name_from_anywhere(tmp_path):
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, str(REPO / "run_experiments.py"),
                         "--flagfile=hoffer_F1_cpu", "--experiment=info"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "F1" in ok.stdout, ok.stderr[-2000:]
    bad = subprocess.run([sys.executable, str(REPO / "run_experiments.py"),
                          "--flagfile=no_such_artifact"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0, bad.stderr
    assert bad.stderr.startswith("error: flagfile no_such_artifact not found")
