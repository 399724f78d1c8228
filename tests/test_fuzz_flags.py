"""Bad input, fuzzed: random values and combinations of lbtf's flags either pass validation or
are refused by absl or lbtf with a one-line message (one per bad flag); never another exception (a
traceback). The
flag level loads no TensorFlow, so hundreds of cases take seconds."""

import math

from absl import flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbtf.errors import UsageError
from lbtf.experiments.flags import module_flags, parse

FLAGS = {f.name: f for f in module_flags()}
NUMBERS = st.one_of(st.integers(-10**12, 10**12).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["0", "-1", "1e-3", "0.1", "1.5", "10%", "1/2", "0/0", ""]))


def _values(flag) -> st.SearchStrategy[str]:
    """Values a user could type: the flag's own kind, its valid choices, and junk."""
    kind = type(flag).__name__
    own = {"EnumFlag": st.sampled_from(list(getattr(flag.parser, "enum_values", []) or ["x"])),
           "BooleanFlag": st.sampled_from(["true", "false", "1", "0", "yes", "maybe"])}.get(kind)
    lists = st.lists(st.one_of(NUMBERS, st.sampled_from(["moving", "batch", "linear", "ghost", "F1"])),
                     max_size=4).map(",".join)
    junk = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")),
                   max_size=12)
    return st.one_of(*(s for s in (own, NUMBERS, lists, junk) if s is not None))


@st.composite
def invocations(draw) -> list[str]:
    names = draw(st.lists(st.sampled_from(sorted(FLAGS)), min_size=1, max_size=6, unique=True))
    args = []
    for name in names:
        if type(FLAGS[name]).__name__ == "BooleanFlag" and draw(st.booleans()):
            args.append(f"--{draw(st.sampled_from(['', 'no']))}{name}")
        else:
            args.append(f"--{name}={draw(_values(FLAGS[name]))}")
    return args


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(invocations())
def test_any_flags_pass_or_fail_in_one_line(args):
    try:
        config = parse(args)
    except (flags.Error, UsageError) as e:
        # One line, or (absl, several bad flags at once) one line per flag, each naming it.
        lines = str(e).strip().splitlines()
        assert lines and (len(lines) == 1 or all(ln.startswith("flag") for ln in lines)), (
            args, lines)
        return
    # What passed is a usable configuration: the numbers the experiments divide by are sane.
    t = config.training
    assert t.trials >= 1 and t.max_epochs >= 1 and t.learning_rate > 0, args
    assert all(math.isfinite(float(e)) and float(e) > 0 for e in config.measure.epsilons), args

