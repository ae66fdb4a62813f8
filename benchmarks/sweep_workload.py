"""W8: a sweep of 8 W2-sized members (jaxrnn.sweep) against the 8 trained one after another.

  python -m benchmarks.sweep_workload [--quick] [--json PATH]
  jaxrnn-bench --workloads W8 [--quick]          (the same, through benchmarks/run.py)

The members are W2's model (LSTM 2x128, one-hot input, B=50, T=50, Adam, no clipping,
docs/WORKLOADS.md) over the grid lr = 1e-3, 2e-3, 3e-3, 4e-3 x seed = 0, 1. Three peers, each
in its own process:

  jaxrnn-sweep        the 8 members as one jitted program (`jaxrnn.sweep.SweepProgram`:
                      vmap over the members, K steps per call)
  jaxrnn-sequential   8 standalone jaxrnn runs one after another (`Trainer.jit_train_chunk`)
  torch               8 torch.nn.LSTM runs one after another (benchmarks.peers_torch.train)

The figure is the total training chars/s of the 8 members: 8 * B * T characters per step of
all of them, over the time it takes (a sequential peer's step of all 8 is the sum of its 8
runs' step times, repetition by repetition). The table's `x torch` and `x seq` are the ratios
to the torch and jaxrnn-sequential peers. This module imports NumPy and the standard library
only at the top: JAX and torch are imported inside the child that runs a peer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np

from benchmarks import workloads as wl

PEERS = ("jaxrnn-sweep", "jaxrnn-sequential", "torch")
LRS = (1e-3, 2e-3, 3e-3, 4e-3)
SEEDS = (0, 1)


@dataclasses.dataclass(frozen=True)
class SweepWorkload:
    """W8: `members` copies of `model` that differ in lr and seed."""

    id: str
    name: str
    model: wl.Workload
    lrs: tuple
    seeds: tuple
    steps_per_call: int = 10          # the jaxrnn peers' K (W2's block)
    quick_steps_per_call: int = 2

    @property
    def members(self) -> int:
        return len(self.lrs) * len(self.seeds)

    @property
    def chars_per_step(self) -> int:
        """Characters of one step of every member."""
        return self.members * self.model.chars_per_step

    def describe(self) -> str:
        return (f"{self.name}: {self.members} members of {self.model.id} "
                f"({self.model.describe()}), lr in {{{', '.join(f'{x:g}' for x in self.lrs)}}} "
                f"x seed in {{{', '.join(map(str, self.seeds))}}}; chars/s of all members")


W8 = SweepWorkload("W8", "sweep", wl.W2, LRS, SEEDS)


# ---------------------------------------------------------------------------- the peers (child)


def _jax_configs(workload: SweepWorkload, vocab_size: int, num_tokens: int, quick: bool):
    from jaxrnn.config import Config
    from jaxrnn.sweep import member_configs, parse_grid

    m = workload.model
    k = workload.quick_steps_per_call if quick else workload.steps_per_call
    base = Config(cell=m.cell, hidden_size=m.hidden_size, num_layers=m.num_layers,
                  embedding_size=0, dropout=0.0, seq_len=m.seq_len, batch_size=m.batch_size,
                  optimizer=m.optimizer, lr=m.lr, clip="none", schedule="constant",
                  warmup_steps=0, steps_per_call=k, val_frac=0.0)
    grid = parse_grid([f"lr={','.join(map(str, workload.lrs))}",
                       f"seed={','.join(map(str, workload.seeds))}"])
    return member_configs(base, grid), k


def _sum_steps(results: list[dict]) -> dict:
    """One measurement of all members from each member's own: step times summed rep by rep."""
    reps = min(len(r["step_times"]) for r in results)
    return {"step_times": [sum(r["step_times"][i] for r in results) for i in range(reps)],
            "losses": [x for r in results for x in r["losses"]],
            "compile_s": sum(r["compile_s"] for r in results), "reps": reps,
            "block_steps": results[0]["block_steps"]}


def run_peer(peer: str, workload: SweepWorkload, quick: bool, repeat: int, budget_s: float,
             text: str | None, device: str = "cpu", tf32: bool = True) -> dict:
    """Measures one peer in this process: wl.measure's dict for a step of all members."""
    tokens, vocab_size = wl.load_tokens(text)
    warmup = 0 if quick else 1
    if peer == "torch":
        from benchmarks import peers_torch

        version = peers_torch.setup(None, device, tf32)
        block = workload.model.quick_block_steps if quick else workload.model.block_steps
        runs = [peers_torch.train(dataclasses.replace(workload.model, lr=lr), "torch", tokens,
                                  vocab_size, block_steps=block, repeat=repeat,
                                  budget_s=budget_s / workload.members, warmup_blocks=warmup,
                                  device=device)
                for lr in workload.lrs for _ in workload.seeds]
        result = _sum_steps(runs)
        result["config"] = {"module": "nn.LSTM, 8 runs one after another"}
    else:
        import jax
        import jax.numpy as jnp

        from benchmarks import peers_jax
        from jaxrnn.sweep import SweepProgram
        from jaxrnn.trainer import Trainer

        version = peers_jax.setup(tf32)
        configs, k = _jax_configs(workload, vocab_size, len(tokens), quick)
        device_tokens = jnp.asarray(tokens)
        if peer == "jaxrnn-sweep":
            program = SweepProgram.create(configs, vocab_size, len(tokens), "auto")
            state = {"s": jax.device_put(program.init_states())}
            hyperparams = jax.device_put(program.hyperparams())

            def run_block(n):
                state["s"], metrics = program.jit_train_chunk(state["s"], hyperparams,
                                                              device_tokens, n)
                return np.asarray(metrics["loss"]).mean(0).tolist()  # waits for the call

            result = wl.measure(run_block, k, repeat, budget_s, warmup)
            result["config"] = {"program": "jaxrnn.sweep (vmap over 8 members)",
                                "steps_per_call": k,
                                "layers": program.base.model.rnn.plan.unmasked}
        elif peer == "jaxrnn-sequential":
            runs = []
            for config in configs:
                trainer = Trainer.create(config, vocab_size, len(tokens), "auto")
                state = {"s": trainer.init_state()}

                def run_block(n, trainer=trainer, state=state):
                    state["s"], metrics = trainer.jit_train_chunk(state["s"], device_tokens, n)
                    return np.asarray(metrics["loss"]).tolist()

                runs.append(wl.measure(run_block, k, repeat, budget_s / len(configs), warmup))
            result = _sum_steps(runs)
            result["config"] = {"program": "8 Trainer runs one after another",
                                "steps_per_call": k}
        else:
            raise ValueError(f"unknown W8 peer {peer!r}; choose from {', '.join(PEERS)}")
    losses = np.asarray(result["losses"], np.float64)
    ok = bool(losses.size and np.all(np.isfinite(losses)))
    result.update(version=version, ok=ok, peak_rss_mib=wl.peak_rss_mib(),
                  check=f"{losses.size} losses, all finite" if ok else "non-finite loss")
    return result


# ---------------------------------------------------------------------------- the driver


def _spawn(task: dict, timeout_s: float) -> dict:
    return wl.run_child(["benchmarks.sweep_workload", "--child"], task, timeout_s)


def make_record(peer: str, result: dict, workload: SweepWorkload = W8) -> dict:
    """A record in benchmarks.run's shape (its table prints it), kind "sweep"."""
    record = {key: None for key in ("chars_per_s_median", "chars_per_s_min",
                                    "chars_per_s_max", "ratio_to_torch", "compile_s",
                                    "pct_peak", "peak_rss_mib")}
    record.update(workload=workload.id, peer=peer, kind="sweep", ok=False,
                  ratio_to_sequential=None, members=workload.members)
    if "error" in result:
        record.update(error=result["error"], check=result["error"])
        return record
    record.update(wl.chars_stats(result["step_times"], workload.chars_per_step))
    record.update({k: result.get(k) for k in ("compile_s", "peak_rss_mib", "ok", "check",
                                              "config", "version", "reps", "block_steps",
                                              "wall_s")})
    return record


def run(*, quick: bool = False, repeat: int = 10, budget_s: float = 20.0,
        text: str | None = None, device: str = "cpu", tf32: bool = True,
        timeout_s: float = 1800.0, peers=PEERS, log=print) -> list[dict]:
    """Every W8 peer in its own process; the records, with their ratios to torch and to
    jaxrnn-sequential."""
    log(f"{W8.id}: {W8.describe()}")
    records = []
    for peer in peers:
        task = dict(peer=peer, quick=quick, repeat=repeat, budget_s=budget_s, text=text,
                    device=device, tf32=tf32)
        record = make_record(peer, _spawn(task, timeout_s))
        speed = record["chars_per_s_median"]
        log(f"  {peer:17s} " + (f"{speed:12,.0f} chars/s (all members)" if speed else
                                f"FAILED: {record.get('error')}"))
        records.append(record)
    for base_peer, key in (("torch", "ratio_to_torch"),
                           ("jaxrnn-sequential", "ratio_to_sequential")):
        base = next((r for r in records if r["peer"] == base_peer), None)
        for r in records:
            if base and base["chars_per_s_median"] and r["chars_per_s_median"]:
                r[key] = r["chars_per_s_median"] / base["chars_per_s_median"]
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2-step blocks, no warm-up; the figures mean nothing")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds of timed repetitions per peer")
    parser.add_argument("--text", help="tiny-shakespeare (default: as jaxrnn-bench)")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--json", help="write the records to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one peer, in this process
    args = parser.parse_args(argv)
    if args.child:
        task = json.loads(args.child)
        result = run_peer(task["peer"], W8, task["quick"], task["repeat"], task["budget_s"],
                          task["text"], task.get("device", "cpu"), task.get("tf32", True))
        with open(task["out"], "w") as f:  # where wl.run_child reads it
            json.dump(result, f)
        return
    from benchmarks.run import format_table

    records = run(quick=args.quick, repeat=args.repeat, budget_s=args.budget,
                  text=wl.text_path(args.text), peers=[p for p in args.peers.split(",") if p])
    print()
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    if not all(r["ok"] for r in records):
        sys.exit(1)


if __name__ == "__main__":
    main()
