"""Many models in one program: a sweep's grid, what may be swept, and its jitted step.

A sweep trains the product of a few fields' values (`Grid`) as M members of one jitted
program: every leaf of `jaxrnn.trainer.TrainState` gets a leading [M] axis, and
`SweepProgram.train_chunk` is `jax.vmap` of the one-run `Trainer.train_chunk` over it, K steps
per call as for one run. Members must share every shape and every Python branch, so only the
fields of SWEEPABLE may differ:

  seed           read by the initialisation only: each member is initialised on the host
                 exactly as a standalone run with its seed (`Trainer.init_state`), so its init
                 and dropout keys are a standalone run's
  lr, clip_value, warmup_steps, min_lr_frac, rmsprop_decay, lr_decay, lr_decay_after
                 enter the step as traced per-member scalars through `optim.make_optimizer`'s
                 `values` (no Python control flow reads them there)
  dropout        a traced per-member rate in the model (`SweptRate`)

Every other field is refused with a UserError that names it and says why (shapes, the program's
structure, or the sweep loop's own cadence). On several devices the members are split over a
`members` mesh axis (`member_mesh`): one program under `jax.shard_map`, each device running its
block of members, no communication between them.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import typing

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrnn import data as data_lib
from jaxrnn import optim
from jaxrnn.config import SECTIONS, Config
from jaxrnn.errors import UserError
from jaxrnn.trainer import Trainer, TrainState

MEMBERS = "members"  # the mesh axis the members are split over

# Field -> where its per-member value enters: the host-side initialisation, the optimiser
# (a traced scalar of `optim.make_optimizer(values=...)`) or the model (a traced rate).
SWEEPABLE = {"seed": "init", "dropout": "model", **{f: "optimizer" for f in optim.SWEPT_FIELDS}}

# Fields a member may sweep only where the base config reads them: otherwise every member
# would compute the same thing. field -> (predicate on the config, what it needs).
_READ_WHEN = {
    "rmsprop_decay": (lambda c: c.optimizer == "rmsprop", "optimizer rmsprop"),
    "warmup_steps": (lambda c: c.schedule == "cosine", "schedule cosine"),
    "min_lr_frac": (lambda c: c.schedule == "cosine", "schedule cosine"),
    "lr_decay": (lambda c: c.schedule == "char-rnn", "schedule char-rnn"),
    "lr_decay_after": (lambda c: c.schedule == "char-rnn", "schedule char-rnn"),
    "clip_value": (lambda c: c.clip != "none", "clip norm or elementwise"),
    "dropout": (lambda c: c.model in ("charlm", "minlm"), "model charlm or minlm"),
}

# Why a field that is not SWEEPABLE cannot be: members share one program.
_SHAPES = ("hidden_size", "num_layers", "embedding_size", "seq_len", "batch_size",
           "eval_batch_size", "val_frac", "dtype", "model", "cell", "dim", "expansion",
           "conv_size", "mlp_mult")
_LOOP = ("steps", "minutes", "steps_per_call", "log_every", "eval_every", "sample_every",
         "sample_length", "sample_prime", "checkpoint_every", "keep_checkpoints", "tensorboard")


def _refusal(name: str) -> str:
    if name in _SHAPES:
        return "it changes the shapes of the arrays, and the members share one program"
    if name in _LOOP:
        return "the sweep's members share one run loop; set it for the whole sweep instead"
    return "it changes the structure of the program (a Python branch), which members share"


def _field_types() -> dict[str, type]:
    """Every option's name -> its type (a section's fields by their own names)."""
    types = dict(typing.get_type_hints(Config))
    for name, section in SECTIONS.items():
        types.pop(name)
        types.update(typing.get_type_hints(section))
    return types


# ---------------------------------------------------------------------------- the grid


@dataclasses.dataclass(frozen=True)
class Grid:
    """The swept fields and their values; the members are their product, in order
    (the last field varies fastest: lr=a,b x seed=0,1 -> (a,0), (a,1), (b,0), (b,1))."""

    fields: tuple[str, ...]
    values: tuple[tuple, ...]

    @property
    def members(self) -> list[dict]:
        return [dict(zip(self.fields, combo)) for combo in itertools.product(*self.values)]

    def __len__(self) -> int:
        return math.prod(len(v) for v in self.values)

    def label(self, k: int) -> str:
        """'lr=0.001 seed=1': member k's values."""
        return " ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                        for name, value in self.members[k].items())

    def to_json(self) -> dict:
        return {"fields": list(self.fields), "values": [list(v) for v in self.values],
                "members": self.members}


def parse_grid(specs) -> Grid:
    """`["lr=1e-3,2e-3", "seed=0,1"]` -> Grid; values typed as the config field is.

    A field may be given by its flag's spelling (warmup-steps). Unknown or unsweepable fields,
    a field given twice, and empty or repeated values are UserErrors naming the field.
    """
    types = _field_types()
    fields, values = [], []
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not sep or not name:
            raise UserError(f"sweep {spec!r}: expected FIELD=V1,V2,... (e.g. lr=1e-3,2e-3)",
                            fields=("sweep",))
        if name not in types:
            raise UserError(f"sweep {spec!r}: unknown config field {name!r}", fields=("sweep",))
        if name not in SWEEPABLE:
            raise UserError(f"{name} cannot be swept: {_refusal(name)} (sweepable: "
                            f"{', '.join(SWEEPABLE)})", fields=("sweep", name))
        if name in fields:
            raise UserError(f"sweep: {name} is given twice; give all its values in one "
                            f"--sweep {name}=V1,V2,...", fields=("sweep", name))
        kind = types[name]
        items = [item.strip() for item in text.split(",") if item.strip()]
        try:
            parsed = tuple(kind(item) if kind is not int else int(item) for item in items)
        except ValueError:
            raise UserError(f"sweep {spec!r}: the values of {name} must be "
                            f"{kind.__name__}s", fields=("sweep", name)) from None
        if not parsed:
            raise UserError(f"sweep {spec!r}: no values for {name}", fields=("sweep", name))
        if len(set(parsed)) != len(parsed):
            raise UserError(f"sweep {spec!r}: a value of {name} is repeated (two members "
                            f"would be the same run)", fields=("sweep", name))
        fields.append(name)
        values.append(parsed)
    if not fields:
        raise UserError("sweep: give at least one FIELD=V1,V2,...", fields=("sweep",))
    return Grid(tuple(fields), tuple(values))


def member_configs(base: Config, grid: Grid) -> list[Config]:
    """Each member's config: `base` with its values (checked as any config is)."""
    for name in grid.fields:
        if name not in SWEEPABLE:  # a Grid built by hand
            raise UserError(f"{name} cannot be swept: {_refusal(name)}", fields=("sweep", name))
        if name in _READ_WHEN and not _READ_WHEN[name][0](base):
            raise UserError(f"sweeping {name} changes nothing here: only a run with "
                            f"{_READ_WHEN[name][1]} reads it", fields=("sweep", name))
    return [dataclasses.replace(base, **values) for values in grid.members]


# ---------------------------------------------------------------------------- traced values


class SweptRate:
    """A member's dropout rate inside the vmapped step, where the model expects a float.

    Arithmetic gives the member's traced value: `1 - rate` is the keep probability computed
    on the host in float64 (as Python computes `1.0 - 0.1` in a standalone run), then cast.
    The model's Python tests of the rate (its validation, `rate > 0`) are answered from every
    member's host value: the same answer for all, or an error, except `rate > 0` where some
    members are 0: it answers True, since dropout at rate 0 keeps every element and divides
    by 1, which is the identity (tests/test_sweep.py checks such a member against a
    standalone run without dropout).
    """

    def __init__(self, rate, keep, host_rates):
        self.rate, self.keep, self.host_rates = rate, keep, tuple(float(r) for r in host_rates)

    def _all(self, test, what):
        answers = {bool(test(r)) for r in self.host_rates}
        if len(answers) > 1:
            raise UserError(f"the members' dropout rates {self.host_rates} differ in "
                            f"whether {what}, which changes the program they share",
                            fields=("sweep", "dropout"))
        return answers.pop()

    def __gt__(self, other):
        if other == 0 and any(r > 0 for r in self.host_rates):
            return True
        return self._all(lambda r: r > other, f"dropout > {other}")

    def __lt__(self, other):
        return self._all(lambda r: r < other, f"dropout < {other}")

    def __ge__(self, other):
        return self._all(lambda r: r >= other, f"dropout >= {other}")

    def __le__(self, other):
        return self._all(lambda r: r <= other, f"dropout <= {other}")

    def __eq__(self, other):
        if isinstance(other, SweptRate):
            return self.host_rates == other.host_rates
        return self._all(lambda r: r == other, f"dropout == {other}")

    def __hash__(self):
        return hash(self.host_rates)

    def __bool__(self):
        return self > 0

    def __rsub__(self, other):
        return self.keep if other == 1 else other - self.rate

    def __sub__(self, other):
        return self.rate - other

    def __mul__(self, other):
        return self.rate * other

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self.rate / other

    def __rtruediv__(self, other):
        return other / self.rate

    def __float__(self):
        raise UserError("a swept dropout rate is a traced value here; this model reads it "
                        "as a Python float, so dropout cannot be swept with it",
                        fields=("sweep", "dropout"))

    def __repr__(self):
        return f"SweptRate({', '.join(map(str, self.host_rates))})"


# ---------------------------------------------------------------------------- the mesh


@dataclasses.dataclass(frozen=True)
class Placement:
    """How M members sit on the devices: `used` devices, `per_device` members each, the last
    `padded - M` slots filled with copies of the last member (computed, then dropped)."""

    num_members: int
    devices: tuple
    per_device: int

    @classmethod
    def plan(cls, num_members: int, devices) -> "Placement":
        """As few members per device as the devices allow, on as few devices as that needs:
        6 members on 4 devices -> 3 devices x 2 (no padding); 5 on 4 -> 3 x 2 (one copy)."""
        devices = tuple(devices)
        if not devices:
            raise UserError("sweep: no devices to run on", fields=("devices",))
        per_device = -(-num_members // len(devices))
        used = -(-num_members // per_device)
        return cls(num_members, devices[:used], per_device)

    @property
    def padded(self) -> int:
        return self.per_device * len(self.devices)

    @property
    def mesh(self) -> Mesh | None:
        return Mesh(np.array(self.devices), (MEMBERS,)) if len(self.devices) > 1 else None

    def describe(self) -> str:
        pad = self.padded - self.num_members
        return (f"{self.num_members} members on {len(self.devices)} device(s), "
                f"{self.per_device} each" + (f" ({pad} padding slot(s) run a copy of the last "
                                            f"member and are dropped)" if pad else ""))

    def pad(self, tree):
        """[M, ...] leaves -> [padded, ...] (the last member repeated)."""
        extra = self.padded - self.num_members
        if not extra:
            return tree
        return jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[-1:], extra, 0)]), tree)

    def put(self, tree):
        """Host [padded, ...] leaves onto the devices, split over `members` (or the device)."""
        mesh = self.mesh
        if mesh is None:
            return jax.device_put(tree, self.devices[0])
        return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(MEMBERS)))

    def replicate(self, x):
        mesh = self.mesh
        if mesh is None:
            return jax.device_put(x, self.devices[0])
        return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))


def member_mesh_map(f, placement: Placement, num_split: int, num_shared: int):
    """`f(*split, *shared)`, its first `num_split` arguments and every output split over the
    members axis and the rest replicated, as one shard_map program (no communication); `f`
    itself on one device."""
    mesh = placement.mesh
    if mesh is None:
        return f
    specs = (PartitionSpec(MEMBERS),) * num_split + (PartitionSpec(),) * num_shared
    # check_vma off: the FFI kernel's outputs carry no varying-axes type to check
    return jax.shard_map(f, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(MEMBERS),
                         check_vma=False)


# ---------------------------------------------------------------------------- the program


def _stack(trees):
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


def member_slice(tree, k: int):
    """Member k's pytree from [M, ...] leaves."""
    return jax.tree.map(lambda a: a[k], tree)


@dataclasses.dataclass(frozen=True)
class SweepProgram:
    """The members' configs and the one jitted program that trains them all.

    `base` is member 0's Trainer: the model, data layout and branches every member shares.
    `hyperparams` holds the per-member values of the swept fields that enter the step,
    <[M]> arrays, passed to the program as arguments (so they are traced, never constants).
    """

    configs: tuple
    base: Trainer
    swept: tuple           # the fields whose values differ between members
    windows_per_epoch: int
    placement: Placement
    impl: str = "auto"

    @classmethod
    def create(cls, configs, vocab_size: int, num_train_tokens: int, impl: str = "auto",
               devices=None) -> "SweepProgram":
        configs = tuple(configs)
        base = Trainer.create(configs[0], vocab_size, num_train_tokens, impl)
        differ = [f.name for f in dataclasses.fields(Config)
                  if len({repr(getattr(c, f.name)) for c in configs}) > 1]
        bad = [name for name in differ if name not in SWEEPABLE]
        if bad:
            raise UserError(f"the members differ in {', '.join(bad)}, which cannot be swept: "
                            f"{_refusal(bad[0])}", fields=("sweep", *bad))
        layout = data_lib.StreamLayout(num_train_tokens, configs[0].batch_size,
                                       configs[0].seq_len)
        placement = Placement.plan(len(configs), devices or jax.devices()[:1])
        return cls(configs, base, tuple(differ), layout.windows_per_epoch, placement, impl)

    @property
    def num_members(self) -> int:
        return len(self.configs)

    # ------------------------------------------------------------------ host side

    def hyperparams(self) -> dict:
        """{field: <[padded]> array} of the swept fields that enter the step (dropout also
        gives "keep", 1 - rate computed in float64 on the host)."""
        out = {}
        schedule_dtype = jnp.result_type(float)  # the schedule computes in this (float64: x64)
        run_dtype = jnp.dtype(self.base.config.dtype)
        for name in self.swept:
            where = SWEEPABLE[name]
            if where == "init":
                continue
            values = [getattr(c, name) for c in self.configs]
            if isinstance(values[0], int):
                out[name] = np.asarray(values, np.int32)
            elif name in ("lr", "min_lr_frac", "lr_decay"):
                out[name] = np.asarray(values, schedule_dtype)
            else:  # touches arrays of the run's dtype: kept in it, as a Python float would be
                out[name] = np.asarray(values, run_dtype)
            if name == "dropout":
                out["keep"] = np.asarray([1.0 - v for v in values], run_dtype)
        return self.placement.pad(out)

    def init_states(self) -> TrainState:
        """Every member's initial state, each as its standalone run makes it, stacked [padded]."""
        return self.stack([self._member_init(c) for c in self.configs])

    def _member_init(self, config: Config) -> TrainState:
        # seed is the one swept field the initialisation reads: the rest of it is shared
        return self.base.init_state(seed=config.seed)

    def stack(self, states) -> TrainState:
        """[M] host states (e.g. restored from the members' checkpoints) -> [padded]."""
        return self.placement.pad(_stack(states))

    def member_template(self, k: int) -> TrainState:
        """A state of member k's shapes (to restore its checkpoint into)."""
        return self._member_init(self.configs[k])

    # ------------------------------------------------------------------ traced side

    def member_trainer(self, hp: dict) -> Trainer:
        """The Trainer of one member inside the vmapped program: `hp` holds its traced values."""
        values = {k: v for k, v in hp.items() if k in optim.SWEPT_FIELDS}
        trainer = self.base
        if values:
            optimizer, schedule = optim.make_optimizer(trainer.config, self.windows_per_epoch,
                                                       values)
            trainer = dataclasses.replace(trainer, optimizer=optimizer, schedule=schedule)
        if "dropout" in hp:
            rate = SweptRate(hp["dropout"], hp["keep"], [c.dropout for c in self.configs])
            trainer = dataclasses.replace(trainer,
                                          model=dataclasses.replace(trainer.model, dropout=rate))
        return trainer

    def train_chunk(self, states: TrainState, hyperparams: dict, tokens, num_steps: int):
        """`num_steps` steps of every member: (states, metrics {name: [padded, num_steps]})."""

        def members(states, hyperparams, tokens):
            def one(state, hp):
                return self.member_trainer(hp).train_chunk(state, tokens, num_steps)

            return jax.vmap(one)(states, hyperparams)

        return member_mesh_map(members, self.placement, 2, 1)(states, hyperparams, tokens)

    @functools.cached_property
    def jit_train_chunk(self):
        """`train_chunk` jitted (num_steps static, the states donated)."""
        return jax.jit(self.train_chunk, static_argnums=3, donate_argnums=0)

    def eval_sums(self, params, inputs, targets, weights):
        """Every member's summed weighted NLL and weight: ([padded], [padded])."""

        def members(params, inputs, targets, weights):
            return jax.vmap(self.base.eval_windows_sum, in_axes=(0, None, None, None))(
                params, inputs, targets, weights)

        return member_mesh_map(members, self.placement, 1, 3)(params, inputs, targets, weights)

    @functools.cached_property
    def _jit_eval(self):
        return jax.jit(self.eval_sums)

    def evaluate(self, params, tokens: np.ndarray) -> list[dict]:
        """Each member's {"loss_nats", "bits_per_char", "chars"} on a text (as
        `Trainer.evaluate`: the state carried across windows)."""
        config = self.base.config
        inputs, targets, weights = data_lib.eval_windows(tokens, config.eval_batch_size,
                                                         config.seq_len)
        shared = [self.placement.replicate(np.asarray(a)) for a in (inputs, targets, weights)]
        totals, counts = jax.device_get(self._jit_eval(params, *shared))
        out = []
        for k in range(self.num_members):
            loss = float(totals[k]) / float(counts[k])
            out.append({"loss_nats": loss, "bits_per_char": loss / math.log(2),
                        "chars": int(counts[k])})
        return out

